package tokensource

import (
	"context"
	"time"

	"go.uber.org/zap"
)

const componentKey = "\x00component"

func (e *Engine) loadTicket(ctx context.Context) (*diskTicket, error) {
	key := e.keys.ticket()
	b, err := e.store.Load(ctx, key)
	if err != nil {
		return nil, err
	}
	var d diskTicket
	if err := e.codec.decode(key, b, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// currentTicket is the newest ticket known: storage first (another instance may
// have received the latest push), memory if storage fails.
func (e *Engine) currentTicket(ctx context.Context) (Secret, error) {
	mem := e.ticket.Load()
	stored, err := e.loadTicket(ctx)
	switch {
	case err == nil:
		if mem == nil || !stored.ReceivedAt.Before(mem.ReceivedAt) || stored.CreateTime.After(mem.CreateTime) {
			e.ticket.Store(stored)
			mem = stored
		}
	case !isNotExist(err):
		e.log.Error("reading the stored component ticket failed", zapErr(err))
	case mem != nil:
		e.writeBackTicket(ctx, mem)
	}
	if mem == nil {
		return "", &Error{Kind: KindNoTicket, RetryAfter: 30 * time.Second,
			Msg: "no component_ticket received yet: the platform pushes one every 10 minutes to the 授权事件接收 URL, which must reach tptoken_events"}
	}
	if age := e.now().Sub(mem.ReceivedAt); age > ticketStaleAfter {
		e.log.Warn("the newest component ticket is older than 3 hours: pushes are not arriving", zap.Duration("age", age))
	}
	return Secret(mem.Ticket), nil
}

// ComponentToken returns a valid component_access_token (for TP-level APIs).
func (e *Engine) ComponentToken(ctx context.Context) (Token, error) {
	now := e.now()
	if en := e.comp.cur.Load(); en.fresh(now) {
		if e.syncDue(en, now) {
			e.syncComponentInBackground()
		}
		e.obs.Lookup("", "hit")
		return en.tok, nil
	}
	tok, err := e.wait(ctx, componentKey, func() (any, error) { return e.obtainComponent(onDemand) })
	if err != nil {
		e.obs.Lookup("", "error")
	} else {
		e.obs.Lookup("", "obtained")
	}
	return tok, err
}

// componentToken is ComponentToken for the engine's own calls.
func (e *Engine) componentToken(ctx context.Context) (Token, error) { return e.ComponentToken(ctx) }

func (e *Engine) loadComponent(ctx context.Context) (*record, error) {
	key := e.keys.componentToken(e.family)
	b, err := e.store.Load(ctx, key)
	if err != nil {
		return nil, err
	}
	var d diskComponentToken
	if err := e.codec.decode(key, b, &d); err != nil {
		return nil, err
	}
	return &record{Family: e.family, State: StateActive, AccessToken: Secret(d.Token), AccessIssued: d.Issued,
		AccessExpiry: d.Expiry, Generation: d.Generation, UpdatedAt: d.Issued}, nil
}

func (e *Engine) saveComponent(ctx context.Context, r *record) error {
	key := e.keys.componentToken(e.family)
	b, err := e.codec.encode(key, diskComponentToken{Token: r.AccessToken.Reveal(), Issued: r.AccessIssued, Expiry: r.AccessExpiry, Generation: r.Generation})
	if err != nil {
		return err
	}
	return e.store.Store(ctx, key, b)
}

func (e *Engine) newComponentEntry(r *record, now time.Time) *entry {
	en := &entry{rec: r, checkedAt: now}
	if r != nil && r.AccessToken != "" {
		en.refreshAt, en.unusableAt = margins(r.AccessIssued, r.AccessExpiry, componentRefreshAhead)
		en.tok = Token{Value: r.AccessToken, Family: e.family, Expiry: r.AccessExpiry, Generation: r.Generation}
	}
	return en
}

// adoptComponent installs a stored component token unless it is older than or
// the same as the one in memory.
func (e *Engine) adoptComponent(r *record, now time.Time) *entry {
	for {
		old := e.comp.cur.Load()
		if old != nil && old.rec != nil && r.Generation < old.rec.Generation {
			return old
		}
		en := e.newComponentEntry(r, now)
		if old != nil && en.tok.Value == old.tok.Value {
			en.suspect, en.confirmed, en.retryAt, en.failures, en.lastErr = old.suspect, old.confirmed, old.retryAt, old.failures, old.lastErr
		}
		if e.comp.cur.CompareAndSwap(old, en) {
			return en
		}
	}
}

func (e *Engine) syncComponentInBackground() {
	if !e.comp.syncing.CompareAndSwap(false, true) {
		return
	}
	ctx, done, err := e.begin()
	if err != nil {
		e.comp.syncing.Store(false)
		return
	}
	go func() {
		defer done()
		defer e.comp.syncing.Store(false)
		if r, err := e.loadComponent(ctx); err == nil {
			e.adoptComponent(r, e.now())
		}
	}()
}

// obtainComponent fetches a component token if mode m (onDemand or ahead)
// finds it due, once at a time: reload, lock (v2 fetches invalidate the
// previous token, so they are serialized cluster-wide), reload again, fetch,
// store.
func (e *Engine) obtainComponent(m mode) (any, error) {
	ctx, done, err := e.begin()
	if err != nil {
		return nil, err
	}
	defer done()
	cur := e.comp.cur.Load()
	if r, err := e.loadComponent(ctx); err == nil {
		cur = e.adoptComponent(r, e.now())
	} else if !isNotExist(err) {
		e.log.Error("reading the stored component token failed", zapErr(err))
	}
	now := e.now()
	if !e.due(m, cur, now, 0) {
		return cur.tok, nil
	}
	if cur != nil && now.Before(cur.retryAt) {
		return e.duringBackoff("", cur, now)
	}

	release, err := e.acquire(ctx, e.keys.componentTokenLock(e.family))
	switch {
	case err == nil:
		defer release()
		if r, err := e.loadComponent(ctx); err == nil {
			cur = e.adoptComponent(r, e.now())
		}
		if !e.due(m, cur, e.now(), 0) {
			return cur.tok, nil
		}
	case cur.usable(now):
		return cur.tok, nil
	case e.family == V1:
		// v1 fetches do not invalidate each other: fetching without the lock is safe.
		e.log.Warn("component token lock unavailable; fetching without it (api v1)", zapErr(err))
	default:
		return nil, &Error{Kind: KindUnavailable, Msg: "cannot take the storage lock for the component token (api v2 fetches must be serialized)", RetryAfter: 2 * time.Second, Err: err}
	}

	// Due only because a downstream answer rejected the token: reject.go decides.
	now = e.now()
	reported := cur.reported() && !e.due(m, cur.unsuspected(), now, 0)
	if reported {
		if allow, _ := e.mayRenewSuspect(&e.comp, "", cur, now); !allow {
			return cur.tok, nil
		}
	}

	ticket, err := e.currentTicket(ctx)
	if err != nil {
		return nil, err
	}
	var ct componentGrant
	start := e.now()
	err = e.retry(ctx, func(ctx context.Context) error {
		var err error
		t0 := time.Now()
		ct, err = e.client.ComponentToken(ctx, ticket)
		e.logCall(OpComponentToken, "", t0, err)
		return err
	})
	now = e.now()
	if err != nil {
		en := e.newComponentEntry(nil, now)
		if cur != nil {
			c := *cur
			en = &c
		}
		if !en.confirmed {
			en.suspect = "" // only reported rejected: it keeps serving until it expires
		}
		en.failures++
		en.retryAt = now.Add(e.backoff(en.failures))
		en.lastErr = err
		e.comp.cur.Store(en)
		if en.usable(now) {
			return en.tok, nil
		}
		if c := platformCode(err); c == 40037 || c == 40038 || c == 40003 {
			return nil, &Error{Kind: KindPlatform, Msg: "the platform refused the component credentials (40037 ticket, 40038 secret, 40003 appid): check component_appid, component_appsecret and that tickets arrive", RetryAfter: en.retryAt.Sub(now), Err: err}
		}
		return nil, e.unavailable("", err, en.retryAt.Sub(now))
	}
	var gen uint64
	if cur != nil && cur.rec != nil {
		gen = cur.rec.Generation
	}
	r := &record{Family: e.family, State: StateActive, AccessToken: ct.Token, AccessIssued: start,
		AccessExpiry: start.Add(ct.ExpiresIn), Generation: gen + 1, UpdatedAt: now}
	if err := e.saveComponent(ctx, r); err != nil {
		e.log.Error("storing the component token failed; other instances will fetch their own", zapErr(err))
	}
	en := e.newComponentEntry(r, now)
	e.comp.cur.Store(en)
	if reported {
		e.comp.renewedSuspect(en.tok.Value, now)
	}
	e.log.Info("component token obtained", zap.Time("expiry", r.AccessExpiry), zap.Uint64("generation", r.Generation))
	return en.tok, nil
}
