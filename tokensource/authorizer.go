package tokensource

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// defaultRefreshLife is assumed when the platform omits refresh_expires_in.
const defaultRefreshLife = 30 * 24 * time.Hour

func (e *Engine) loadRecord(ctx context.Context, appid string) (*Record, error) {
	rec, _, err := e.loadRecordSeal(ctx, appid)
	return rec, err
}

// loadRecordSeal is loadRecord that also says how the record is stored
// (sealPlain, sealCurrent, sealPrevious).
func (e *Engine) loadRecordSeal(ctx context.Context, appid string) (*Record, string, error) {
	key := e.keys.authorizer(appid)
	b, err := e.store.Load(ctx, key)
	if err != nil {
		return nil, "", err
	}
	var d diskRecord
	seal, err := e.codec.decodeSeal(key, b, &d)
	if err != nil {
		return nil, "", err
	}
	if d.AppID != appid {
		return nil, "", fmt.Errorf("record %s holds appid %q", key, d.AppID)
	}
	return d.record(), seal, nil
}

// saveRecord writes rec, retrying a failing write twice.
func (e *Engine) saveRecord(ctx context.Context, rec *Record) error {
	key := e.keys.authorizer(rec.AppID)
	b, err := e.codec.encode(key, rec.disk())
	if err != nil {
		return err
	}
	for n := 0; ; n++ {
		err = e.store.Store(ctx, key, b)
		if err == nil || n == 2 {
			return err
		}
		if sleep(ctx, time.Duration(100<<n)*time.Millisecond) != nil {
			return err
		}
	}
}

// loadInto reads the stored record of appid into its slot. A storage failure is
// returned; a missing record installs a "missing" entry.
func (e *Engine) loadInto(ctx context.Context, appid string, s *slot) (*entry, error) {
	rec, err := e.loadRecord(ctx, appid)
	if err != nil && !isNotExist(err) {
		return s.cur.Load(), err
	}
	return e.adopt(s, rec, e.now()), nil
}

// mode says when an obtain renews the token.
type mode int

const (
	onDemand     mode = iota // a request: renew when the token is not fresh
	ahead                    // background: renew a little before the refresh point
	renewRefresh             // background: renew when the refresh token nears its expiry
	forced                   // operator: renew unless another instance did meanwhile
)

func (m mode) key(appid string) string {
	switch m {
	case ahead:
		return "\x00ahead:" + appid
	case renewRefresh:
		return "\x00renew:" + appid
	case forced:
		return "\x00force:" + appid
	}
	return appid
}

// due reports whether the entry needs renewing in mode m. seen is the
// generation the caller saw before waiting (forced mode).
func (e *Engine) due(m mode, en *entry, now time.Time, seen uint64) bool {
	switch m {
	case ahead:
		// maintain schedules at a jittered point within 1–1.5 leads of the
		// refresh point; any such job is honored.
		return !en.fresh(now.Add(backgroundLead(en) * 3 / 2))
	case renewRefresh:
		return !en.fresh(now) || e.refreshTokenDue(en.rec, now)
	case forced:
		return en.rec.Generation == seen || !en.usable(now)
	}
	return !en.fresh(now)
}

// backgroundLead: background refreshes start about this long before the refresh
// point, so requests never wait for one: a tenth of the token's life, at most a
// minute (plus up to half of that as jitter, so instances do not all try at once).
func backgroundLead(en *entry) time.Duration {
	if en == nil || en.rec == nil {
		return 0
	}
	return min(time.Minute, en.rec.AccessExpiry.Sub(en.rec.AccessIssued)/10)
}

// refreshTokenDue: the refresh token must be used before RefreshTokenMargin
// (at most half its life) is left, or the record waits for a recovery.
func (e *Engine) refreshTokenDue(rec *Record, now time.Time) bool {
	if rec == nil || rec.State == StateUnauthorized {
		return false
	}
	if rec.State == StateNeedsRecovery || rec.RefreshToken == "" {
		return true
	}
	if rec.RefreshExpiry.IsZero() {
		return false
	}
	margin := min(e.cfg.RefreshTokenMargin, rec.RefreshExpiry.Sub(rec.AccessIssued)/2)
	return !now.Before(rec.RefreshExpiry.Add(-margin))
}

// obtain is the slow path of Token, run once per appid and mode at a time:
// reload, lock, reload again, and renew only if still due.
func (e *Engine) obtain(appid string, m mode) (any, error) {
	ctx, done, err := e.begin()
	if err != nil {
		return nil, err
	}
	defer done()
	s := e.slotFor(appid)

	cur, err := e.loadInto(ctx, appid, s)
	if err != nil {
		e.log.Error("reading the authorizer record from storage failed", zapApp(appid), zapErr(err))
		if cur.usable(e.now()) {
			return cur.tok, nil // serve from memory
		}
		return nil, &Error{Kind: KindUnavailable, AppID: appid, Msg: "cannot read the authorizer record from storage", RetryAfter: 5 * time.Second, Err: err}
	}
	now := e.now()
	if err := e.stateError(appid, cur); err != nil {
		return nil, err
	}
	seen := cur.rec.Generation
	if m != forced && !e.due(m, cur, now, seen) {
		return cur.tok, nil
	}
	if m != forced && now.Before(cur.retryAt) {
		return e.duringBackoff(appid, cur, now)
	}

	release, err := e.acquire(ctx, e.keys.authorizerLock(appid))
	if err != nil {
		if cur.usable(now) {
			e.log.Warn("storage lock unavailable; serving the current token", zapApp(appid), zapErr(err))
			return cur.tok, nil
		}
		e.log.Error("storage lock unavailable; refusing to refresh without it", zapApp(appid), zapErr(err))
		return nil, &Error{Kind: KindUnavailable, AppID: appid, Msg: "cannot take the storage lock; refusing to refresh without it", RetryAfter: 2 * time.Second, Err: err}
	}
	defer release()

	// Double check under the lock: another instance may have refreshed.
	cur, err = e.loadInto(ctx, appid, s)
	if err != nil {
		// The lock is held, so no one else uses the refresh token now; the worst a
		// stale cached record can cause is a 40021, which recovery handles.
		e.log.Error("reading the authorizer record under the lock failed; continuing from memory", zapApp(appid), zapErr(err))
		if cur == nil || cur.rec == nil {
			return nil, &Error{Kind: KindUnavailable, AppID: appid, Msg: "cannot read the authorizer record from storage", RetryAfter: 5 * time.Second, Err: err}
		}
	}
	if cur.dirty {
		e.flushLocked(ctx, appid, s, cur)
		cur = s.cur.Load()
	}
	now = e.now()
	if err := e.stateError(appid, cur); err != nil {
		return nil, err
	}
	if !e.due(m, cur, now, seen) {
		return cur.tok, nil
	}
	if m == forced {
		if w := forcedWait(cur.rec, now); w > 0 {
			return nil, rateLimited(appid, w)
		}
		c := *cur
		c.rec = cur.rec.withForced(now) // kept by the record the renewal writes
		cur = &c
	}
	// Due only because a downstream answer rejected the token: reject.go decides.
	reported := m != forced && cur.reported() && !e.due(m, cur.unsuspected(), now, seen)
	if reported && !e.mayRenewSuspect(s, appid, cur, now) {
		return cur.tok, nil
	}
	v, err := e.renewLocked(ctx, appid, s, cur)
	if tok, ok := v.(Token); reported && ok && err == nil && tok.Value != cur.tok.Value {
		s.renewedSuspect(tok.Value, now)
	}
	return v, err
}

// duringBackoff answers while the last attempt's backoff runs: the current token
// if it may still be sent, else the last error with a Retry-After.
func (e *Engine) duringBackoff(appid string, cur *entry, now time.Time) (any, error) {
	if cur.usable(now) {
		return cur.tok, nil
	}
	return nil, e.unavailable(appid, cur.lastErr, cur.retryAt.Sub(now))
}

// unavailable maps the cause of a failed renewal to the caller's error.
func (e *Engine) unavailable(appid string, cause error, retryAfter time.Duration) error {
	var ee *Error
	if errors.As(cause, &ee) {
		c := *ee
		c.AppID = appid
		if c.RetryAfter < retryAfter {
			c.RetryAfter = retryAfter
		}
		return &c
	}
	retryAfter = max(retryAfter, time.Second)
	switch {
	case IsTimeout(cause):
		return &Error{Kind: KindTimeout, AppID: appid, Msg: "the platform did not answer in time and the current token has expired", RetryAfter: retryAfter, Err: cause}
	case IsRetryable(cause):
		return &Error{Kind: KindUnavailable, AppID: appid, Msg: "the platform is failing and the current token has expired", RetryAfter: retryAfter, Err: cause}
	default:
		return &Error{Kind: KindPlatform, AppID: appid, Msg: "the platform refused to renew the token", RetryAfter: retryAfter, Err: cause}
	}
}

// renewLocked refreshes the record (or recovers it) and commits the result.
// The storage lock of appid is held.
func (e *Engine) renewLocked(ctx context.Context, appid string, s *slot, cur *entry) (any, error) {
	rec := cur.rec
	now := e.now()
	var next *Record
	var err error
	op := OpRefresh
	if rec.State == StateNeedsRecovery || rec.RefreshToken == "" || (!rec.RefreshExpiry.IsZero() && !now.Before(rec.RefreshExpiry)) {
		op = "recover"
		next, err = e.recoverLocked(ctx, rec)
	} else {
		next, err = e.refreshLocked(ctx, rec)
		if IsRefreshTokenDead(err) {
			e.log.Warn("refresh token rejected (40021): recovering with retrieve code + exchange", zapApp(appid), zapErr(err))
			op = "recover"
			next, err = e.recoverLocked(ctx, rec)
			if err != nil && !NeedsReauthorization(err) {
				rec = rec.clone()
				rec.State = StateNeedsRecovery
				rec.RefreshToken = ""
			}
		}
	}
	if err != nil {
		return e.failedLocked(ctx, appid, s, cur, rec, op, err)
	}
	return e.commitLocked(ctx, s, next), nil
}

// withComponentToken runs fn with the component token; if the platform says that
// token is expired or wrong (40009/40010), it is invalidated (only if still the
// one used) and fn runs once more with a fresh one.
func (e *Engine) withComponentToken(ctx context.Context, fn func(ct Secret) error) error {
	ct, err := e.componentToken(ctx)
	if err != nil {
		return err
	}
	err = fn(ct.Value)
	if !IsComponentTokenError(err) {
		return err
	}
	e.log.Warn("component token rejected; fetching a new one once", zapErr(err))
	markSuspect(&e.comp, ct.Value, true) // the platform's own answer: not subject to the rejection policy
	if fromRedirect(ctx) {
		return err // a redirect's budget is one call; the next one gets the new token
	}
	ct2, err2 := e.componentToken(ctx)
	if err2 != nil {
		return err2
	}
	return fn(ct2.Value)
}

func (e *Engine) refreshLocked(ctx context.Context, rec *Record) (*Record, error) {
	var g Grant
	start := e.now()
	err := e.withComponentToken(ctx, func(ct Secret) error {
		return e.retry(ctx, func(ctx context.Context) error {
			var err error
			t0 := time.Now()
			g, err = e.client.Refresh(ctx, ct, rec.RefreshToken)
			e.logCall(OpRefresh, rec.AppID, t0, err)
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	return e.fromGrant(rec, rec.AppID, g, start), nil
}

// recoverLocked gets a new authorization code with the retrieve API and
// exchanges it: the way back when a refresh token is lost or rejected.
func (e *Engine) recoverLocked(ctx context.Context, rec *Record) (*Record, error) {
	appid := rec.AppID
	var code Secret
	err := e.withComponentToken(ctx, func(ct Secret) error {
		return e.retry(ctx, func(ctx context.Context) error {
			var err error
			t0 := time.Now()
			code, _, err = e.client.RetrieveCode(ctx, ct, appid)
			e.logCall(OpRetrieve, appid, t0, err)
			return err
		})
	})
	if err != nil {
		e.obs.Recovery(e.shownAppID(appid), e.causeOf(appid), false)
		return nil, err
	}
	next, err := e.exchangeLocked(ctx, rec, appid, code)
	e.obs.Recovery(e.shownAppID(appid), e.causeOf(appid), err == nil)
	if err != nil {
		return nil, err
	}
	if t := e.localEventTime(); t.After(next.LastEventAt) {
		next.LastEventAt = t // the authorization is confirmed now: older pushes must not revoke it
	}
	e.log.Info("authorizer recovered with a retrieved authorization code", zapApp(appid), zap.Uint64("generation", next.Generation))
	return next, nil
}

// exchangeLocked swaps code for a token pair. The storage lock of appid is held
// (or appid is not known yet and the caller locks before storing).
func (e *Engine) exchangeLocked(ctx context.Context, rec *Record, appid string, code Secret) (*Record, error) {
	var g Grant
	start := e.now()
	err := e.withComponentToken(ctx, func(ct Secret) error {
		return e.retry(ctx, func(ctx context.Context) error {
			var err error
			t0 := time.Now()
			g, err = e.client.ExchangeCode(ctx, ct, code)
			e.logCall(OpExchange, appid, t0, err)
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	if appid != "" && g.AppID != "" && g.AppID != appid {
		return nil, &Error{Kind: KindPlatform, AppID: appid, Msg: fmt.Sprintf("the code belongs to authorizer %s, not to this one", g.AppID)}
	}
	if appid == "" {
		appid = g.AppID
	}
	next := e.fromGrant(rec, appid, g, start)
	next.AuthorizedAt = next.LastRefresh
	next.LastCode = code.Fingerprint()
	return next, nil
}

// fromGrant builds the record that follows prev (nil for a first exchange).
func (e *Engine) fromGrant(prev *Record, appid string, g Grant, issued time.Time) *Record {
	now := e.now()
	r := &Record{AppID: appid, Family: e.family, State: StateActive, UpdatedAt: now, LastRefresh: now,
		AccessToken: g.AccessToken, AccessIssued: issued, AccessExpiry: issued.Add(g.ExpiresIn),
		RefreshToken: g.RefreshToken, Permissions: g.Permissions}
	life := g.RefreshExpiresIn
	if life <= 0 {
		life = defaultRefreshLife
	}
	r.RefreshExpiry = issued.Add(life)
	if prev != nil {
		r.Generation = prev.Generation
		r.AuthorizedAt, r.LastCode, r.LastEventAt, r.ForcedAt = prev.AuthorizedAt, prev.LastCode, prev.LastEventAt, prev.ForcedAt
		if len(r.Permissions) == 0 {
			r.Permissions = prev.Permissions
		}
	}
	r.Generation++
	return r
}

// commitLocked stores next and installs it. A failed write keeps next in memory,
// marked dirty: it is written again before the next renewal and by Maintain.
func (e *Engine) commitLocked(ctx context.Context, s *slot, next *Record) Token {
	err := e.saveRecord(ctx, next)
	en := e.newEntry(next, e.now())
	if err != nil {
		en.dirty = true
		e.log.Error("STORING THE ROTATED TOKENS FAILED: the only valid refresh token is in this process's memory until a write succeeds",
			zapApp(next.AppID), zap.Uint64("generation", next.Generation), zapErr(err))
	} else {
		e.log.Info("authorizer tokens stored", zapApp(next.AppID), zap.Uint64("generation", next.Generation),
			zap.Time("access_expiry", next.AccessExpiry), zap.Time("refresh_expiry", next.RefreshExpiry))
	}
	s.cur.Store(en)
	return en.tok
}

// flushLocked writes a dirty in-memory record unless storage moved on meanwhile.
func (e *Engine) flushLocked(ctx context.Context, appid string, s *slot, cur *entry) {
	stored, err := e.loadRecord(ctx, appid)
	if err != nil && !isNotExist(err) {
		return
	}
	if stored != nil && stored.Generation >= cur.rec.Generation {
		e.log.Warn("dropping an unsaved in-memory record: storage holds a newer one", zapApp(appid))
		s.cur.Store(e.newEntry(stored, e.now()))
		return
	}
	if err := e.saveRecord(ctx, cur.rec); err != nil {
		e.log.Error("storing the in-memory record still fails", zapApp(appid), zapErr(err))
		return
	}
	e.log.Info("unsaved in-memory record stored", zapApp(appid), zap.Uint64("generation", cur.rec.Generation))
	clean := *cur
	clean.dirty = false
	s.cur.CompareAndSwap(cur, &clean)
}

// failedLocked records a failed renewal: authorization gone → unauthorized;
// otherwise the last error and a backoff. The current token keeps serving while
// it may be sent.
func (e *Engine) failedLocked(ctx context.Context, appid string, s *slot, cur *entry, rec *Record, op string, cause error) (any, error) {
	now := e.now()
	next := rec.clone()
	next.LastError = lastErrorOf(op, cause, now)
	next.UpdatedAt = now
	next.Generation++
	gone := NeedsReauthorization(cause)
	if gone {
		next.State = StateUnauthorized
		next.AccessToken, next.RefreshToken = "", ""
		e.log.Warn("authorization gone; requests for this authorizer now fail until it authorizes again",
			zapApp(appid), zap.Int("code", PlatformCode(cause)))
	}
	if err := e.saveRecord(ctx, next); err != nil {
		e.log.Error("storing the failure state failed", zapApp(appid), zapErr(err))
	}
	en := e.newEntry(next, now)
	en.dirty = cur.dirty
	if !gone {
		en.failures = cur.failures + 1
		en.retryAt = now.Add(e.backoff(en.failures))
		en.lastErr = cause
		// A token only reported rejected keeps serving until it expires: it may
		// well be valid, and the platform refuses to renew it right now.
		if next.AccessToken == cur.tok.Value && cur.confirmed {
			en.suspect, en.confirmed = cur.suspect, true
		}
	}
	s.cur.Store(en)
	if gone {
		return nil, &Error{Kind: KindUnauthorized, AppID: appid, Msg: "the authorization is gone: the mini-app must authorize the TP again", Err: cause}
	}
	e.log.Error("renewing the authorizer token failed", zapApp(appid), zap.String("op", op),
		zap.Int("code", PlatformCode(cause)), zap.Duration("retry_in", en.retryAt.Sub(now)), zapErr(cause))
	if en.usable(now) {
		return en.tok, nil
	}
	return nil, e.unavailable(appid, cause, en.retryAt.Sub(now))
}

func lastErrorOf(op string, err error, now time.Time) *LastError {
	le := &LastError{Op: op, Message: err.Error(), At: now}
	var pe *PlatformError
	if errors.As(err, &pe) {
		le.Code, le.LogID = pe.Code, pe.LogID
	}
	le.Message = truncate(le.Message, 300)
	return le
}

// logCall logs and observes one platform call that started at t0 (real time).
// A call answered successfully confirms its appid (see opTag).
func (e *Engine) logCall(op, appid string, t0 time.Time, err error) {
	took := time.Since(t0)
	result := CallResult(err)
	if t := e.tagOf(appid); t != nil && err == nil {
		t.unconfirmed.Store(false)
	}
	e.obs.PlatformCall(op, e.shownAppID(appid), e.causeOf(appid), result, took)
	fields := []zap.Field{zap.String("op", op), zap.String("result", result), zap.Duration("duration", took)}
	if appid != "" {
		fields = append(fields, e.appField(appid))
	}
	var pe *PlatformError
	if errors.As(err, &pe) {
		fields = append(fields, zap.Int("code", pe.Code), zap.String("log_id", pe.LogID))
	}
	if err != nil {
		e.log.Warn("platform call failed", append(fields, zapErr(e.scrubbed(appid, err)))...)
		return
	}
	e.log.Info("platform call", fields...)
}

// scrubbed is err without appid while appid is unconfirmed (a platform
// message may quote it).
func (e *Engine) scrubbed(appid string, err error) error {
	if appid == "" || e.shownAppID(appid) != "" {
		return err
	}
	return WithoutAppID(err, appid)
}
