package tokensource

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// A single token: one stored token without a refresh token, fetched again
// whenever it is due, for all instances sharing the storage. The component
// token of an Engine is one (component.go); an app's own access_token or
// client_token is another (appsource.go).
//
// A fetch may cut the previous token's life (a v2 component token, an app
// token: the platform keeps it a few minutes more, and only the newest two),
// so fetches are serialized cluster-wide as refreshes are (refresh.go):
// reload, decide, lock, reload again, decide again, fetch, store, unlock. At
// most one fetch per generation happens across instances, every instance
// sends the token storage holds, and a downstream rejection is handled by
// the policy of reject.go. The decisions of when are policy.go's.
type single struct {
	*base
	slot

	subject string // the app id of an app token; "" for the component token (logs, Observer)
	what    string // in messages: "the component token", "app tt…'s client_token"
	sfKey   string // single-flight key of its operations (mode.key)
	family  Family // Token.Family of the component token; "" for an app token
	key     string // storage key
	lock    string // storage lock name

	ahead time.Duration // RefreshAhead
	// grace is how long the platform keeps the previous token once a new one
	// is fetched; 0: fetching does not cut it. With a grace, a fetch whose
	// outcome is unknown cuts the current token's use (policy.go: cutAt).
	grace        time.Duration
	syncInterval time.Duration // SyncInterval
	// lockless: fetches do not invalidate each other (v1 component token),
	// so one may be made when the storage lock cannot be taken.
	lockless bool
	// serveAhead: a token due but still sendable is served while a
	// background renewal runs; otherwise the caller waits for the renewal.
	serveAhead bool

	// fetch prepares a fetch: it returns the call to make (each attempt
	// makes one), or an error that ends the operation with nothing recorded
	// (the component token's missing ticket).
	fetch func(ctx context.Context) (func(context.Context) (Secret, time.Duration, error), error)
	// logCall logs and observes one attempt that started at t0 (real time).
	logCall func(t0 time.Time, err error)
	// failure is what a failed fetch tells callers once no token is usable.
	failure func(cause error, retryAfter time.Duration) error

	renewing atomic.Bool // a renewal started by a request runs (serveAhead)
}

// diskToken is the stored form of a single token. Files written before app
// tokens existed hold only token, issued, expiry and generation.
type diskToken struct {
	V          int         `json:"v,omitempty"`
	Kind       string      `json:"kind,omitempty"`  // app tokens: client_token, app_access_token
	AppID      string      `json:"appid,omitempty"` // app tokens: the app
	Token      string      `json:"token,omitempty"`
	Issued     time.Time   `json:"issued,omitzero"`
	Expiry     time.Time   `json:"expiry,omitzero"`
	Generation uint64      `json:"generation"`
	LastFetch  time.Time   `json:"last_fetch,omitzero"`
	LastError  *LastError  `json:"last_error,omitempty"`
	ForcedAt   []time.Time `json:"forced_at,omitempty"`
}

// token returns the token to send. The hot path is a memory read; a due
// token is renewed once at a time, the caller waiting for it unless the
// current token may still be sent (serveAhead).
func (s *single) token(ctx context.Context) (Token, error) {
	now := s.now()
	en := s.cur.Load()
	if en.fresh(now) {
		s.touch(now)
		if s.syncDue(en, now) {
			s.syncInBackground()
		}
		s.obs.Lookup(s.subject, "hit")
		return en.tok, nil
	}
	s.touch(now)
	if s.serveAhead && en.usable(now) && en.suspect != en.tok.Value {
		if !now.Before(en.retryAt) {
			s.renewInBackground()
		}
		s.obs.Lookup(s.subject, "hit")
		return en.tok, nil
	}
	tok, err := s.wait(ctx, onDemand.key(s.sfKey), func() (any, error) { return s.obtain(onDemand, 0) })
	if err == nil && !s.sendable(tok) {
		// A renewal that began earlier found the token sendable then, and
		// this caller joined it: decide again, now.
		tok, err = s.wait(ctx, onDemand.key(s.sfKey), func() (any, error) { return s.obtain(onDemand, 0) })
	}
	if err != nil {
		s.obs.Lookup(s.subject, "error")
	} else {
		s.obs.Lookup(s.subject, "obtained")
	}
	return tok, err
}

// sendable reports whether tok is the token in effect and may be sent now.
func (s *single) sendable(tok Token) bool {
	en := s.cur.Load()
	return en != nil && en.tok.Value == tok.Value && en.usable(s.now())
}

// renewInBackground starts one renewal without waiting for it.
func (s *single) renewInBackground() {
	if !s.renewing.CompareAndSwap(false, true) {
		return
	}
	if !s.spawn(func() {
		defer s.renewing.Store(false)
		<-s.sf.DoChan(onDemand.key(s.sfKey), func() (any, error) { return s.obtain(onDemand, 0) })
	}) {
		s.renewing.Store(false)
	}
}

// syncInBackground reloads the stored token once, without blocking the
// caller, so that another instance's fetch is seen well within the grace.
func (s *single) syncInBackground() {
	if !s.syncing.CompareAndSwap(false, true) {
		return
	}
	if !s.spawn(func() {
		defer s.syncing.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if r, err := s.load(ctx); err == nil {
			s.adopt(r, s.now())
		}
	}) {
		s.syncing.Store(false)
	}
}

func (s *single) load(ctx context.Context) (*record, error) {
	b, err := s.store.Load(ctx, s.key)
	if err != nil {
		return nil, err
	}
	var d diskToken
	if err := s.codec.decode(s.key, b, &d); err != nil {
		return nil, err
	}
	if d.AppID != s.subject {
		return nil, fmt.Errorf("record %s holds appid %q", s.key, d.AppID)
	}
	return &record{AppID: d.AppID, Family: s.family, State: StateActive, AccessToken: Secret(d.Token),
		AccessIssued: d.Issued, AccessExpiry: d.Expiry, Generation: d.Generation, UpdatedAt: d.Issued,
		LastRefresh: d.LastFetch, LastError: d.LastError, ForcedAt: d.ForcedAt}, nil
}

func (s *single) save(ctx context.Context, r *record) error {
	d := diskToken{Token: r.AccessToken.Reveal(), Issued: r.AccessIssued, Expiry: r.AccessExpiry,
		Generation: r.Generation, LastFetch: r.LastRefresh, LastError: r.LastError, ForcedAt: r.ForcedAt}
	if s.subject != "" {
		d.V, d.Kind, d.AppID = 1, s.sfKey, s.subject
	}
	b, err := s.codec.encode(s.key, d)
	if err != nil {
		return err
	}
	return s.store.Store(ctx, s.key, b)
}

func (s *single) newEntry(r *record, now time.Time) *entry {
	en := &entry{rec: r, checkedAt: now}
	en.syncEvery = s.syncEvery(en)
	if r != nil && r.AccessToken != "" {
		en.refreshAt, en.unusableAt = margins(r.AccessIssued, r.AccessExpiry, s.ahead)
		en.tok = Token{Value: r.AccessToken, AppID: s.subject, Family: s.family, Expiry: r.AccessExpiry, Generation: r.Generation}
	}
	return en
}

// adopt installs a stored token unless memory holds a newer one (or the same
// generation unsaved). Of the same token, what this instance learned is kept:
// a rejection, a backoff, a use cut short by a fetch of unknown outcome.
func (s *single) adopt(r *record, now time.Time) *entry {
	for {
		old := s.cur.Load()
		if old != nil && old.rec != nil && (r.Generation < old.rec.Generation || old.dirty && r.Generation == old.rec.Generation) {
			return old
		}
		en := s.newEntry(r, now)
		if old != nil && en.tok.Value != "" && en.tok.Value == old.tok.Value {
			en.keepLearned(old)
			en.unusableAt = minTime(en.unusableAt, old.unusableAt)
		}
		if s.cur.CompareAndSwap(old, en) {
			return en
		}
	}
}

// reload reads the stored token into memory and returns the entry in effect
// (memory's when storage fails: logged).
func (s *single) reload(ctx context.Context) *entry {
	r, err := s.load(ctx)
	switch {
	case err == nil:
		return s.adopt(r, s.now())
	case !isNotExist(err):
		s.log.Error("reading the stored token failed; going on with memory", s.subjectField(), zap.String("token", s.sfKey), zapErr(err))
	}
	return s.cur.Load()
}

func (s *single) subjectField() zap.Field {
	if s.subject == "" {
		return zap.Skip()
	}
	return zapApp(s.subject)
}

// obtain fetches the token if mode m finds it due (seen: the generation a
// forced caller saw before waiting), once at a time across instances, and
// returns the token to use.
func (s *single) obtain(m mode, seen uint64) (any, error) {
	ctx, done, err := s.begin()
	if err != nil {
		return nil, err
	}
	defer done()

	// 1. Reload: another instance may have fetched it.
	cur := s.reload(ctx)
	now := s.now()
	if !cur.isDirty() && !s.due(m, cur, now, seen) {
		return cur.tok, nil
	}
	if m != forced && cur != nil && now.Before(cur.retryAt) {
		return s.duringBackoff(cur, now)
	}

	// 2. Lock, reload, decide again: one fetch per generation across instances.
	release, err := s.acquire(ctx, s.lock)
	locked := err == nil
	now = s.now() // the wait for the lock may have been long
	switch {
	case locked:
		defer release()
		cur = s.reload(ctx)
		if cur.isDirty() {
			cur = s.flushLocked(ctx, cur)
		}
		now = s.now()
		if !s.due(m, cur, now, seen) {
			return cur.tok, nil
		}
	case cur.usable(now):
		return cur.tok, nil
	case s.lockless:
		s.log.Warn("storage lock unavailable; fetching "+s.what+" without it (fetches do not invalidate each other)", zapErr(err))
	default:
		return nil, &Error{Kind: KindUnavailable, Msg: "cannot take the storage lock for " + s.what + " (fetches must be serialized: each cuts the previous token)",
			RetryAfter: 2 * time.Second, Err: err}
	}

	// 3. Decide what kind of fetch this is.
	var forcedAt []time.Time
	if cur != nil && cur.rec != nil {
		forcedAt = cur.rec.ForcedAt
	}
	if m == forced {
		if cur != nil && cur.rec != nil {
			if w := forcedWait(cur.rec, now); w > 0 {
				return nil, s.forcedLimited(w)
			}
			forcedAt = cur.rec.withForced(now).ForcedAt
		} else {
			forcedAt = []time.Time{now}
		}
	}
	// Due only because a downstream answer rejected the token: reject.go decides.
	reported := m != forced && cur.reported() && !s.due(m, cur.unsuspected(), now, seen)
	if reported {
		if allow, _ := s.mayRenewSuspect(&s.slot, s.subject, s.what, cur, now); !allow {
			return cur.tok, nil
		}
	}

	// 4. Fetch and store, under the lock.
	call, err := s.fetch(ctx)
	if err != nil {
		return nil, err
	}
	var tok Secret
	var life time.Duration
	var unknownSince time.Time // the first attempt that may have taken effect unseen
	start := s.now()
	err = s.retry(ctx, func(ctx context.Context) error {
		at, t0 := s.now(), time.Now()
		v, l, err := call(ctx)
		s.logCall(t0, err)
		if err != nil && unknownOutcome(err) && unknownSince.IsZero() {
			unknownSince = at
		}
		tok, life = v, l
		return err
	})
	now = s.now()
	if err != nil {
		return s.failed(ctx, cur, err, unknownSince, locked, now)
	}
	var gen uint64
	if cur != nil && cur.rec != nil {
		gen = cur.rec.Generation
	}
	r := &record{AppID: s.subject, Family: s.family, State: StateActive, AccessToken: tok, AccessIssued: start,
		AccessExpiry: start.Add(life), Generation: gen + 1, UpdatedAt: now, LastRefresh: now, ForcedAt: forcedAt}
	en := s.newEntry(r, now)
	if err := s.save(ctx, r); err != nil {
		en.dirty = true
		s.log.Error("STORING THE NEW TOKEN FAILED: other instances still send the previous one, which this fetch cut short; it is written again before the next fetch",
			s.subjectField(), zap.String("token", s.sfKey), zap.Uint64("generation", r.Generation), zapErr(err))
	}
	s.cur.Store(en)
	if reported {
		s.renewedSuspect(en.tok.Value, now)
		if s.grace > 0 && cur.rec != nil {
			s.log.Warn("the platform rejected "+s.what+" long before it expired: another system probably fetches this token too "+
				"(each fetch elsewhere cuts the token tptoken holds to a few minutes, and only the newest two stay valid); "+
				"stop it, or send its requests through tptoken",
				s.subjectField(), zap.String("token", s.sfKey), zap.Duration("rejected_after", now.Sub(cur.rec.AccessIssued).Round(time.Second)),
				zap.Duration("expires_in", cur.rec.AccessExpiry.Sub(now).Round(time.Second)), zap.Uint64("generation", r.Generation))
		}
	}
	s.log.Info(s.what+" obtained", s.subjectField(), zap.String("token", s.sfKey), zap.String("reason", reason(m, reported)),
		zap.Time("expiry", r.AccessExpiry), zap.Uint64("generation", r.Generation))
	return en.tok, nil
}

// reason names why a fetch was made, in its log line.
func reason(m mode, reported bool) string {
	switch {
	case reported:
		return "rejected"
	case m == ahead:
		return "ahead"
	case m == forced:
		return "forced"
	}
	return "on_demand"
}

func (en *entry) isDirty() bool { return en != nil && en.dirty }

// duringBackoff answers while the last attempt's backoff runs: the current
// token if it may still be sent, else the last failure with a Retry-After.
func (s *single) duringBackoff(cur *entry, now time.Time) (any, error) {
	if cur.usable(now) {
		return cur.tok, nil
	}
	return nil, s.failure(cur.lastErr, cur.retryAt.Sub(now))
}

// failed records a failed fetch: a backoff (policy.go: retryIn), the last
// error (stored, when the lock is held, for every instance's operators), and,
// when an attempt may have taken effect unseen, the current token's use cut
// to what the platform leaves it (policy.go: cutAt). The current token keeps
// serving while it may be sent.
func (s *single) failed(ctx context.Context, cur *entry, cause error, unknownSince time.Time, locked bool, now time.Time) (any, error) {
	en := s.newEntry(nil, now)
	if cur != nil {
		c := *cur
		en = &c
	}
	if !en.confirmed {
		en.suspect = "" // only reported rejected: it keeps serving until it expires
	}
	en.failures++
	en.retryAt = now.Add(s.retryIn(en, cause))
	en.lastErr = cause
	if !unknownSince.IsZero() && s.grace > 0 && en.tok.Value != "" {
		en.unusableAt = minTime(en.unusableAt, cutAt(unknownSince, s.grace, en.rec))
	}
	if locked && !en.dirty {
		// Operators of every instance see why (Info reads storage). The
		// generation is the token's: it does not move.
		r := &record{AppID: s.subject, Family: s.family, State: StateActive}
		if en.rec != nil {
			r = en.rec.clone()
		}
		r.LastError, r.UpdatedAt = lastErrorOf(s.sfKey, cause, now), now
		if err := s.save(ctx, r); err != nil {
			s.log.Error("storing the failure state failed", s.subjectField(), zap.String("token", s.sfKey), zapErr(err))
		}
		en.rec = r
	}
	s.cur.Store(en)
	s.log.Error("fetching "+s.what+" failed", s.subjectField(), zap.String("token", s.sfKey),
		zap.Int("code", platformCode(cause)), zap.Duration("retry_in", en.retryAt.Sub(now)),
		zap.Bool("current_token_usable", en.usable(now)), zapErr(cause))
	if en.usable(now) {
		return en.tok, nil
	}
	return nil, s.failure(cause, en.retryAt.Sub(now))
}

// flushLocked writes a token only memory holds (a failed write) unless
// storage moved on meanwhile, and returns the entry in effect.
func (s *single) flushLocked(ctx context.Context, cur *entry) *entry {
	if err := s.save(ctx, cur.rec); err != nil {
		s.log.Error("storing the in-memory token still fails", s.subjectField(), zap.String("token", s.sfKey), zapErr(err))
		return cur
	}
	s.log.Info("unsaved in-memory token stored", s.subjectField(), zap.String("token", s.sfKey), zap.Uint64("generation", cur.rec.Generation))
	clean := *cur
	clean.dirty = false
	if s.cur.CompareAndSwap(cur, &clean) {
		return &clean
	}
	return s.cur.Load()
}

// forcedLimited is the error of an operator's fetch over its budget.
func (s *single) forcedLimited(wait time.Duration) error {
	return &Error{Kind: KindRateLimited, RetryAfter: wait,
		Msg: fmt.Sprintf("%s: at most %d forced fetches in %s (counted across all instances); try again in %s",
			s.what, forcedMax, forcedWindow, wait.Round(time.Second))}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
