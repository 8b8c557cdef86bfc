package tokensource

import (
	"context"
	"path"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Info is what may be shown of an authorizer: everything but token values.
type Info struct {
	AppID         string       `json:"appid"`
	Family        Family       `json:"family"`
	State         State        `json:"state"`
	AccessExpiry  time.Time    `json:"access_expiry,omitzero"`
	RefreshExpiry time.Time    `json:"refresh_expiry,omitzero"`
	LastRefresh   time.Time    `json:"last_refresh,omitzero"`
	AuthorizedAt  time.Time    `json:"authorized_at,omitzero"`
	UpdatedAt     time.Time    `json:"updated_at,omitzero"`
	Generation    uint64       `json:"generation"`
	Permissions   []Permission `json:"permissions,omitempty"`
	LastError     *LastError   `json:"last_error,omitempty"`
	Unsaved       bool         `json:"unsaved,omitempty"` // the newest tokens live only in memory (storage write failing)
}

// InfoOf is the displayable view of r.
func InfoOf(r *Record) Info {
	return Info{AppID: r.AppID, Family: r.Family, State: r.State, AccessExpiry: r.AccessExpiry,
		RefreshExpiry: r.RefreshExpiry, LastRefresh: r.LastRefresh, AuthorizedAt: r.AuthorizedAt,
		UpdatedAt: r.UpdatedAt, Generation: r.Generation, Permissions: r.Permissions, LastError: r.LastError}
}

// ExchangeCode exchanges an authorization code (from an AUTHORIZED or
// UPDATE_AUTHORIZED push, the authorization redirect, or an operator) and stores
// the authorizer's tokens. appid may be "" when unknown (the redirect carries no
// appid). eventAt orders pushes: an event older than the last one applied to the
// authorizer is ignored. Pushes are retried by the platform, so a code already
// exchanged is a success without a platform call.
func (e *Engine) ExchangeCode(ctx context.Context, appid string, code Secret, eventAt time.Time) (Info, error) {
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

	var next *Record
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
			return InfoOf(prev), nil
		}
		if prev.Family != e.family && prev.State == StateActive {
			e.log.Warn("authorizer moves to another token family with a new code", zapApp(appid),
				zap.String("from", string(prev.Family)), zap.String("to", string(e.family)))
		}
		if next == nil && !eventAt.IsZero() && eventAt.Before(prev.LastEventAt) {
			e.log.Info("ignoring an authorization push older than the last one applied", zapApp(appid))
			return InfoOf(prev), nil
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
	return InfoOf(next), nil
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
	list, err := e.store.List(ctx, e.keys.codeDir(), false)
	if err != nil {
		return
	}
	for _, key := range list {
		b, err := e.store.Load(ctx, key)
		if err != nil {
			continue
		}
		var d diskCode
		if e.codec.decode(key, b, &d) != nil || e.now().Sub(d.At) > codeMemory {
			_ = e.store.Delete(ctx, key)
		}
	}
}

func (e *Engine) exchangeError(appid string, err error) error {
	switch {
	case IsCodeExpired(err):
		return &Error{Kind: KindPlatform, AppID: appid, Msg: "the authorization code expired or was already used (codes live 1 hour and work once): retrieve a new one", Err: err}
	case NeedsReauthorization(err):
		return &Error{Kind: KindUnauthorized, AppID: appid, Msg: "the platform says this mini-app is not authorized to the TP", Err: err}
	}
	return e.unavailable(appid, err, e.cfg.RetryBase)
}

// Unauthorize marks the authorizer unauthorized (an UNAUTHORIZED push) and
// forgets its tokens: requests then fail at once, with no platform call, until a
// new code arrives. An event older than the last one applied is ignored.
func (e *Engine) Unauthorize(ctx context.Context, appid string, eventAt time.Time) error {
	if err := CheckAppID(appid); err != nil {
		return err
	}
	_, err := e.locked(ctx, "\x00unauth:", appid, "record the revocation", func(octx context.Context, s *slot, prev *Record) (any, error) {
		now := e.now()
		next := &Record{AppID: appid, Family: e.family}
		if prev != nil {
			if !eventAt.IsZero() && eventAt.Before(prev.LastEventAt) {
				e.log.Info("ignoring an UNAUTHORIZED push older than the last authorization", zapApp(appid))
				return nil, nil
			}
			if prev.State == StateUnauthorized {
				return nil, nil
			}
			next = prev.clone()
		}
		next.State = StateUnauthorized
		next.AccessToken, next.RefreshToken = "", ""
		next.AccessExpiry, next.RefreshExpiry = time.Time{}, time.Time{}
		next.UpdatedAt = now
		if eventAt.After(next.LastEventAt) {
			next.LastEventAt = eventAt
		}
		next.Generation++
		if err := e.saveRecord(octx, next); err != nil {
			// Still stop using it here; the next push retry stores it.
			s.cur.Store(e.newEntry(next, now))
			return nil, &Error{Kind: KindUnavailable, AppID: appid, Msg: "storing the revocation failed", RetryAfter: 5 * time.Second, Err: err}
		}
		s.cur.Store(e.newEntry(next, now))
		e.log.Warn("authorizer unauthorized", zapApp(appid))
		return nil, nil
	})
	return err
}

// AppIDs lists the authorizers that have a record in storage, sorted.
func (e *Engine) AppIDs(ctx context.Context) ([]string, error) {
	list, err := e.store.List(ctx, e.keys.authorizerDir(), false)
	if err != nil {
		if isNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	ids := make([]string, 0, len(list))
	for _, k := range list {
		name := path.Base(k)
		if id, ok := strings.CutSuffix(name, ".json"); ok && ValidAppID(id) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// locked runs fn once per key+appid at a time (single-flight), as an engine
// operation holding the authorizer's storage lock, with its stored record (nil
// when there is none). what says, in errors, what the lock was needed for.
func (e *Engine) locked(ctx context.Context, key, appid, what string, fn func(ctx context.Context, s *slot, prev *Record) (any, error)) (any, error) {
	return e.await(ctx, key+appid, func() (any, error) {
		octx, done, err := e.begin()
		if err != nil {
			return nil, err
		}
		defer done()
		release, err := e.acquire(octx, e.keys.authorizerLock(appid))
		if err != nil {
			return nil, &Error{Kind: KindUnavailable, AppID: appid, Msg: "cannot take the storage lock to " + what, RetryAfter: 2 * time.Second, Err: err}
		}
		defer release()
		prev, err := e.loadRecord(octx, appid)
		if err != nil && !isNotExist(err) {
			return nil, &Error{Kind: KindUnavailable, AppID: appid, Msg: "cannot read the authorizer record from storage", RetryAfter: 5 * time.Second, Err: err}
		}
		return fn(octx, e.slotFor(appid), prev)
	})
}
