package tokensource

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// ExchangeCode exchanges an authorization code an operator supplies (seeding
// an authorizer) and stores the authorizer's tokens. appid may be "" when
// unknown. A code already exchanged is a success without a platform call.
func (e *Engine) ExchangeCode(ctx context.Context, appid string, code Secret) (Info, error) {
	return e.exchangeCode(ctx, appid, code, time.Time{})
}

// exchangeCode is ExchangeCode for a code from any trusted source (an
// AUTHORIZED or UPDATE_AUTHORIZED push, an operator). eventAt orders pushes: an
// event older than the last one applied to the authorizer is ignored; zero
// stamps the exchange with the local clock. Pushes are retried by the
// platform, so a code already exchanged is a success without a platform call.
func (e *Engine) exchangeCode(ctx context.Context, appid string, code Secret, eventAt time.Time) (Info, error) {
	if code == "" {
		return Info{}, &Error{Kind: KindBadInput, AppID: appid, Msg: "empty authorization code"}
	}
	if appid != "" && !ValidAppID(appid) {
		return Info{}, CheckAppID(appid)
	}
	fn := func() (any, error) { return e.exchange(appid, code, eventAt, false) }
	v, err := e.await(ctx, codeKey(code.Fingerprint()), fn)
	if isRedirectRefusal(err) {
		// This call joined a redirect's exchange of the same code, which its
		// budget refused: that refusal is the redirect's, not ours.
		v, err = e.await(ctx, codeKey(code.Fingerprint()), fn)
	}
	if err != nil {
		return Info{}, err
	}
	return v.(Info), nil
}

// exchange is ExchangeCode's work; fromRedirect marks an exchange started by
// the authorization redirect (its platform calls run on the redirect's slot).
func (e *Engine) exchange(appid string, code Secret, eventAt time.Time, fromRedirect bool) (any, error) {
	ctx, done, err := e.begin()
	if err != nil {
		return nil, err
	}
	defer done()
	if fromRedirect {
		ctx = context.WithValue(ctx, redirectCall{}, true)
	}
	fp := code.Fingerprint()
	// The event time of this authorization orders later pushes (an older
	// UNAUTHORIZED must not revoke it); a local exchange has none of its own.
	stamp := eventAt
	if stamp.IsZero() {
		stamp = e.localEventTime()
	}

	var next *record
	if appid == "" {
		// The redirect after an authorization carries the code the AUTHORIZED
		// push already exchanged: answer from the code index, with no platform call.
		if known, ok := e.lookupCode(ctx, fp); ok {
			if info, err := e.Info(ctx, known); err == nil {
				return info, nil
			}
		}
		// Unknown appid: exchange first, then lock the appid the platform names.
		next, err = e.exchangeLocked(ctx, nil, "", code)
		if err != nil {
			return nil, e.exchangeError("", err)
		}
		appid = next.AppID
		if !ValidAppID(appid) {
			return nil, &Error{Kind: KindPlatform, Msg: "the exchange answer lacks a valid authorizer_appid"}
		}
	}

	release, err := e.acquire(ctx, e.keys.authorizerLock(appid))
	if err != nil {
		return nil, &Error{Kind: KindUnavailable, AppID: appid, Msg: "cannot take the storage lock to store the authorization", RetryAfter: 2 * time.Second, Err: err}
	}
	defer release()
	s := e.slotFor(appid)
	prev, err := e.loadRecord(ctx, appid)
	if err != nil && !isNotExist(err) {
		return nil, &Error{Kind: KindUnavailable, AppID: appid, Msg: "cannot read the authorizer record from storage", RetryAfter: 5 * time.Second, Err: err}
	}
	if prev != nil {
		if prev.LastCode == fp {
			// Already exchanged (a retried push, or the push of a code the
			// redirect exchanged first): a later event time still counts.
			if stamp.After(prev.LastEventAt) {
				rec := prev.clone()
				rec.LastEventAt, rec.UpdatedAt = stamp, e.now()
				rec.Generation++
				if err := e.saveRecord(ctx, rec); err != nil {
					return nil, &Error{Kind: KindUnavailable, AppID: appid, Msg: "storing the authorization's event time failed", RetryAfter: 5 * time.Second, Err: err}
				}
				prev = rec
			}
			e.adopt(s, prev, e.now())
			return infoOf(prev), nil
		}
		if prev.Family != e.family && prev.State == StateActive {
			e.log.Warn("authorizer moves to another token family with a new code", zapApp(appid),
				zap.String("from", string(prev.Family)), zap.String("to", string(e.family)))
		}
		if next == nil && !eventAt.IsZero() && eventAt.Before(prev.LastEventAt) {
			e.log.Info("ignoring an authorization push older than the last one applied", zapApp(appid))
			return infoOf(prev), nil
		}
	}
	if next == nil {
		next, err = e.exchangeLocked(ctx, prev, appid, code)
		if err != nil {
			return nil, e.exchangeError(appid, err)
		}
	} else if prev != nil {
		next.Generation = prev.Generation + 1
		next.LastEventAt = prev.LastEventAt
	}
	if stamp.After(next.LastEventAt) {
		next.LastEventAt = stamp
	}
	e.commitLocked(ctx, s, next)
	e.rememberCode(ctx, fp, appid)
	e.log.Info("authorization code exchanged", zapApp(appid), zap.Uint64("generation", next.Generation))
	return infoOf(next), nil
}

// exchangeLocked swaps code for a token pair. The storage lock of appid is held
// (or appid is not known yet and the caller locks before storing).
func (e *Engine) exchangeLocked(ctx context.Context, rec *record, appid string, code Secret) (*record, error) {
	var g grant
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
	next.Chain = newChainID() // an exchange starts a new chain (and kills the family's previous one)
	return next, nil
}

// localEventTime is the event time of an authorization established here (a
// redirect, an operator's code, a recovery, an import) rather than by a push:
// the clock, at the second precision of a push's EventTime, so that a push of
// the same second is not taken for an older one.
func (e *Engine) localEventTime() time.Time { return e.now().Truncate(time.Second) }

// codeMemory is how long an exchanged code is remembered (codes live an hour).
const codeMemory = 2 * time.Hour

func (e *Engine) rememberCode(ctx context.Context, fp, appid string) {
	key := e.keys.code(fp)
	b, err := e.codec.encode(key, diskCode{AppID: appid, At: e.now()})
	if err == nil {
		err = e.store.Store(ctx, key, b)
	}
	if err != nil {
		e.log.Warn("remembering an exchanged code failed (a later redirect with it will fail)", zapApp(appid), zapErr(err))
	}
}

func (e *Engine) lookupCode(ctx context.Context, fp string) (string, bool) {
	key := e.keys.code(fp)
	b, err := e.store.Load(ctx, key)
	if err != nil {
		return "", false
	}
	var d diskCode
	if e.codec.decode(key, b, &d) != nil || !ValidAppID(d.AppID) || e.now().Sub(d.At) > codeMemory {
		return "", false
	}
	return d.AppID, true
}

// forgetOldCodes deletes code index entries older than codeMemory.
func (e *Engine) forgetOldCodes(ctx context.Context) {
	forgetExpired(ctx, e, e.keys.codeDir(), func(d diskCode) bool { return e.now().Sub(d.At) > codeMemory })
}

func (e *Engine) exchangeError(appid string, err error) error {
	switch {
	case isCodeExpired(err):
		return &Error{Kind: KindPlatform, AppID: appid, Msg: "the authorization code expired or was already used (codes live 1 hour and work once): retrieve a new one", Err: err}
	case needsReauthorization(err):
		return &Error{Kind: KindUnauthorized, AppID: appid, Msg: "the platform says this mini-app is not authorized to the TP", Err: err}
	}
	return e.unavailable(appid, err, e.cfg.RetryBase)
}
