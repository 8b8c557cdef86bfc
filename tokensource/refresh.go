package tokensource

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
)

// The refresh path. obtain is the one place a token is renewed, whoever asks
// (a request, the background loop, an operator), in the order certmagic
// obtains a certificate: reload, decide, lock, reload again, decide again,
// renew, store, unlock. The decisions are policy.go's (due, backoff); the
// single-use refresh token is used only under the storage lock, on the record
// just reloaded, and the rotated pair is stored before the lock is released.

// obtain renews appid's token if mode m finds it due, and returns the token to
// use. It runs once per appid and mode at a time (single-flight, mode.key).
func (e *Engine) obtain(appid string, m mode) (any, error) {
	ctx, done, err := e.begin()
	if err != nil {
		return nil, err
	}
	defer done()
	s := e.slotFor(appid)

	// 1. Reload: another instance may have renewed it, or a push changed it.
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
	// 2. Decide without the lock: most callers find it renewed already. An
	// unsaved record (a failed write) is written first, whatever the mode.
	seen := cur.rec.Generation
	if m != forced && !cur.dirty && !e.due(m, cur, now, seen) {
		return cur.tok, nil
	}
	if m != forced && now.Before(cur.retryAt) {
		return e.duringBackoff(appid, cur, now)
	}

	// 3. Lock: one renewal at a time across instances.
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

	// 4. Reload under the lock: another instance may have renewed meanwhile.
	cur, err = e.loadInto(ctx, appid, s)
	if err != nil {
		// The lock is held, so no one else uses the refresh token now; the worst a
		// stale cached record can cause is a 40021, which recovery handles.
		e.log.Error("reading the authorizer record under the lock failed; continuing from memory", zapApp(appid), zapErr(err))
		if cur == nil || cur.rec == nil {
			return nil, &Error{Kind: KindUnavailable, AppID: appid, Msg: "cannot read the authorizer record from storage", RetryAfter: 5 * time.Second, Err: err}
		}
	}
	if cur.dirty { // an earlier write failed: store the newest pair before anything else
		e.flushLocked(ctx, appid, s, cur)
		cur = s.cur.Load()
	}

	// 5. Decide again, on what storage holds now.
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
	// Due only because a downstream answer rejected the token (or said the
	// authorization is gone): reject.go decides.
	reported := m != forced && cur.reported() && !e.due(m, cur.unsuspected(), now, seen)
	var gone bool
	if reported {
		var allow bool
		if allow, gone = e.mayRenewSuspect(s, appid, "this authorizer's token", cur, now); !allow {
			return cur.tok, nil
		}
	}

	// 6. Renew and store, still under the lock.
	v, err := e.renewLocked(ctx, appid, s, cur)
	if reported {
		if tok, ok := v.(Token); ok && err == nil && tok.Value != cur.tok.Value {
			s.renewedSuspect(tok.Value, now)
		}
		if gone {
			e.verifiedGone(appid, cur, v, err)
		}
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
	case isTimeout(cause):
		return &Error{Kind: KindTimeout, AppID: appid, Msg: "the platform did not answer in time and the current token has expired", RetryAfter: retryAfter, Err: cause}
	case isRetryable(cause):
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
	var next *record
	var err error
	op := OpRefresh
	if needsRecovery(rec, now) {
		op = "recover"
		next, err = e.recoverLocked(ctx, rec)
	} else {
		next, err = e.refreshLocked(ctx, rec)
		if isRefreshTokenDead(err) {
			e.log.Warn("refresh token rejected (40021): recovering with retrieve code + exchange", zapApp(appid), zapErr(err))
			op = "recover"
			next, err = e.recoverLocked(ctx, rec)
			if err != nil && !needsReauthorization(err) {
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
	if !isComponentTokenError(err) {
		return err
	}
	e.log.Warn("component token rejected; fetching a new one once", zapErr(err))
	markSuspect(&e.comp.slot, ct.Value, true) // the platform's own answer: not subject to the rejection policy
	if fromRedirect(ctx) {
		return err // a redirect's budget is one call; the next one gets the new token
	}
	ct2, err2 := e.componentToken(ctx)
	if err2 != nil {
		return err2
	}
	return fn(ct2.Value)
}

func (e *Engine) refreshLocked(ctx context.Context, rec *record) (*record, error) {
	var g grant
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
func (e *Engine) recoverLocked(ctx context.Context, rec *record) (*record, error) {
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

// fromGrant builds the record that follows prev (nil for a first exchange).
func (e *Engine) fromGrant(prev *record, appid string, g grant, issued time.Time) *record {
	now := e.now()
	r := &record{AppID: appid, Family: e.family, State: StateActive, UpdatedAt: now, LastRefresh: now,
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
		r.Chain = prev.Chain // a refresh continues the chain (an exchange starts one: exchangeLocked)
		if len(r.Permissions) == 0 {
			r.Permissions = prev.Permissions
		}
	}
	if r.Chain == "" {
		r.Chain = newChainID() // a record from before chains were named gets its name now
	}
	r.Generation++
	return r
}

// commitLocked stores next and installs it. A failed write keeps next in memory,
// marked dirty: it is written again before the next renewal and by Maintain.
func (e *Engine) commitLocked(ctx context.Context, s *slot, next *record) Token {
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

// flushLocked writes a dirty in-memory record unless storage moved on
// meanwhile (a newer record of its chain, or another chain: writeback.go), or
// an operator deleted it.
func (e *Engine) flushLocked(ctx context.Context, appid string, s *slot, cur *entry) {
	stored, err := e.loadRecord(ctx, appid)
	if err != nil && !isNotExist(err) {
		return
	}
	if !memoryNewer(cur.rec, stored) {
		e.log.Warn("dropping an unsaved in-memory record: storage holds a newer one", zapApp(appid))
		s.cur.Store(e.newEntry(stored, e.now()))
		return
	}
	if stored == nil && e.wasForgotten(ctx, cur.rec) {
		e.log.Info("dropping an in-memory record an operator deleted", zapApp(appid))
		s.cur.Store(e.newEntry(nil, e.now()))
		return
	}
	if err := e.saveRecord(ctx, cur.rec); err != nil {
		e.log.Error("storing the in-memory record still fails", zapApp(appid), zapErr(err))
		return
	}
	e.log.Info("unsaved in-memory record stored", zapApp(appid), zap.Uint64("generation", cur.rec.Generation), zap.Bool("was_missing", stored == nil))
	clean := *cur
	clean.dirty = false
	s.cur.CompareAndSwap(cur, &clean)
}

// failedLocked records a failed renewal: authorization gone → unauthorized;
// otherwise the last error and a backoff. The current token keeps serving while
// it may be sent.
func (e *Engine) failedLocked(ctx context.Context, appid string, s *slot, cur *entry, rec *record, op string, cause error) (any, error) {
	now := e.now()
	next := rec.clone()
	next.LastError = lastErrorOf(op, cause, now)
	next.UpdatedAt = now
	next.Generation++
	gone := needsReauthorization(cause)
	if gone {
		next.State = StateUnauthorized
		next.AccessToken, next.RefreshToken = "", ""
		e.log.Warn("authorization gone; requests for this authorizer now fail until it authorizes again",
			zapApp(appid), zap.Int("code", platformCode(cause)))
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
		zap.Int("code", platformCode(cause)), zap.Duration("retry_in", en.retryAt.Sub(now)), zapErr(cause))
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
	result := callResult(err)
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
