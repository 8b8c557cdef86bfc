package tokensource

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// Downstream rejections.
//
// When a forwarded request is answered "token invalid" (v1 40020, v2 28001003 /
// 28001008, 40009 / 40010 for a component token), the caller reports the token
// it sent with Invalidate; the next Token call reloads the record and, if
// storage holds the same token, renews it. That answer is evidence, not proof:
// it comes back through a path and query the client chose, from an upstream
// that may echo anything, and every renewal spends a single-use refresh token
// (and, for a component token, one of the platform's component-token calls).
// So what an answer can make the engine do is bounded here, in one place:
//
//   - A token is acted on at most once per rejectInterval: a second report of
//     the same token within it is ignored ("throttled"). With the platform
//     refusing renewals, that is one renewal attempt per interval, and the
//     suspect token keeps being sent until it really expires (it may well be
//     valid): a refused renewal never makes an authorizer unusable.
//   - A token obtained by such a renewal that is reported again within
//     rejectInterval trips a breaker ("breaker_tripped"): the answers are not
//     about the token (a fresh token is not invalid at once), so for
//     breakerOpenFor no report renews that authorizer's (or the component's)
//     token ("breaker_open"). Expiry-driven renewals go on as usual.
//   - A report that leads to a reload finding a newer token in storage (another
//     instance renewed it) costs no platform call and trips nothing.
//
// The intervals and the breaker's timing are in policy.go (rejectInterval,
// breakerOpenFor). The state is per instance and per authorizer (plus one for
// the component token), kept with the authorizer's cached slot.

// Outcomes of a report, as given to Observer.Rejection (and Observer.GoneReport).
const (
	RejectInvalidated    = "invalidated"     // the token is dropped: reloaded, renewed if still current
	RejectThrottled      = "throttled"       // the same token was acted on less than rejectInterval ago
	RejectBreakerTripped = "breaker_tripped" // a token obtained by a renewal was reported at once
	RejectBreakerOpen    = "breaker_open"    // ignored while the breaker is open
)

// Outcomes of the refresh that verifies a report of ReportGone, as given to
// Observer.GoneReport.
const (
	GoneConfirmed  = "confirmed"  // the platform confirmed it: the record is marked unauthorized
	GoneAlive      = "alive"      // the refresh succeeded: the authorization lives, the pair rotated
	GoneUnverified = "unverified" // the refresh failed otherwise: the token keeps serving until it expires
)

// rejections is what a slot remembers of downstream rejections.
type rejections struct {
	mu          sync.Mutex
	lastSent    Secret    // the token last acted on
	lastAt      time.Time // when
	lastGone    bool      // that report said the authorization is gone (ReportGone)
	renewed     Secret    // the token obtained by the last renewal a report caused
	renewedAt   time.Time // when
	openUntil   time.Time // the breaker: no report-driven renewal before this
	trippedOnce bool      // a trip was logged in this slot's life (later trips log at Info)
}

func (s *slot) rejections() *rejections {
	if r := s.rej.Load(); r != nil {
		return r
	}
	s.rej.CompareAndSwap(nil, new(rejections))
	return s.rej.Load()
}

// Invalidate reports that a downstream answer rejected the token sent for
// appid. The cached token is dropped only if it is still the one sent
// (compare-and-invalidate, so a token renewed meanwhile is kept) and the
// rejection policy above allows it. It reports whether the token was dropped;
// either way the next Token call returns the token to use.
func (e *Engine) Invalidate(appid string, sent Token) bool {
	v, ok := e.slots.Get(appid)
	if !ok {
		return false
	}
	return e.report(v.(*slot), appid, sent.Value, false)
}

// InvalidateComponent is Invalidate for the component token.
func (e *Engine) InvalidateComponent(sent Token) bool {
	return e.report(&e.comp.slot, "", sent.Value, false)
}

// ReportGone reports that a downstream answer to a request sent with the token
// sent said the authorization of appid is gone (v1 errno 40022 / 40004 or a
// v2 counterpart: docs/protocol.md §Downstream APIs). Such an answer comes
// back through a path and query the client chose, so it never marks anything
// by itself: it goes through the bounds of Invalidate (once a minute per
// token, the breaker), and the next Token call verifies it with one refresh
// under the lock. The platform's answer to that refresh decides: the
// authorization is gone (40004 / 40022: the record is marked unauthorized, and
// later calls answer KindUnauthorized without calling the platform), or it
// lives (the pair rotates, nothing is lost). It reports whether the report was
// acted on.
func (e *Engine) ReportGone(appid string, sent Token) bool {
	v, ok := e.slots.Get(appid)
	if !ok {
		return false
	}
	return e.report(v.(*slot), appid, sent.Value, true)
}

// report applies the policy to a downstream report of sent (appid "" for the
// component token): a rejection of the token, or with gone an answer saying
// the authorization is gone.
func (e *base) report(s *slot, appid string, sent Secret, gone bool) bool {
	cur := s.cur.Load()
	if cur == nil || cur.tok.Value == "" || cur.tok.Value != sent || cur.suspect == sent {
		return false // stale, or already being handled
	}
	now := e.now()
	r := s.rejections()
	r.mu.Lock()
	result := r.onReport(sent, now)
	if result == RejectInvalidated {
		r.lastGone = gone
	}
	r.mu.Unlock()
	e.observeReport(appid, gone, result)
	if result != RejectInvalidated {
		return false
	}
	if gone {
		e.log.Info("a downstream answer said the authorization is gone; the next use verifies it with one refresh",
			zapApp(appid), zap.Uint64("generation", cur.tok.Generation))
	}
	return markSuspect(s, sent, false)
}

// observeReport hands the outcome of a report to the observer it belongs to.
func (e *base) observeReport(appid string, gone bool, result string) {
	if gone {
		e.obs.GoneReport(appid, result)
	} else {
		e.obs.Rejection(appid, result)
	}
}

// markSuspect marks the slot's token as rejected, if it is still sent. A
// confirmed rejection (the platform's own token API refused it) makes the token
// unusable; a reported one only makes it due for a reload or renewal. Either
// way the backoff of an earlier failure is lifted: a rejection is news.
func markSuspect(s *slot, sent Secret, confirmed bool) bool {
	for {
		old := s.cur.Load()
		if old == nil || old.tok.Value == "" || old.tok.Value != sent || old.suspect == sent && (old.confirmed || !confirmed) {
			return false
		}
		en := *old
		en.suspect, en.confirmed = sent, confirmed
		en.retryAt = time.Time{}
		if s.cur.CompareAndSwap(old, &en) {
			return true
		}
	}
}

// reported: en's token was reported rejected by a downstream answer (not
// confirmed by the platform's own token API).
func (en *entry) reported() bool {
	return en != nil && en.suspect != "" && en.suspect == en.tok.Value && !en.confirmed
}

// unsuspected is en without the suspicion.
func (en *entry) unsuspected() *entry {
	c := *en
	c.suspect = ""
	return &c
}

// mayRenewSuspect decides, under the lock and after the reload, whether a
// reported rejection of cur's token (which needs no renewal otherwise) may
// renew it, and whether the report said the authorization is gone; what
// names the token in the log. When it may not, the suspicion is lifted: the
// token keeps being served.
func (e *base) mayRenewSuspect(s *slot, appid, what string, cur *entry, now time.Time) (allow, gone bool) {
	r := s.rejections()
	r.mu.Lock()
	allow, tripped := r.onRenewal(cur.tok.Value, now)
	first := tripped && !r.trippedOnce
	r.trippedOnce = r.trippedOnce || tripped
	gone = r.lastGone && r.lastSent == cur.tok.Value
	r.mu.Unlock()
	if allow {
		return true, gone
	}
	if tripped {
		e.observeReport(appid, gone, RejectBreakerTripped)
		msg := "upstream answers rejected a token obtained less than a minute ago because of such an answer: " +
			"they are not about the token (a client may be steering them through the path or query it chooses); " +
			"for a while no such answer renews " + what + ", which keeps being sent"
		fields := []zap.Field{zap.Duration("for", breakerOpenFor), zap.Uint64("generation", cur.tok.Generation)}
		if appid != "" {
			fields = append(fields, zapApp(appid))
		}
		if first {
			e.log.Warn(msg, fields...)
		} else {
			e.log.Info(msg, fields...)
		}
	}
	s.cur.CompareAndSwap(cur, cur.unsuspected()) // changed meanwhile: the next call decides again
	return false, gone
}

// renewedSuspect records the token a report-driven renewal obtained.
func (s *slot) renewedSuspect(tok Secret, now time.Time) {
	r := s.rejections()
	r.mu.Lock()
	r.renewed, r.renewedAt = tok, now
	r.mu.Unlock()
}

// verifiedGone reports what the refresh verifying a report of ReportGone came
// to: v and err are renewLocked's answer for cur.
func (e *Engine) verifiedGone(appid string, cur *entry, v any, err error) {
	tok, ok := v.(Token)
	switch {
	case ok && err == nil && tok.Value != cur.tok.Value:
		e.obs.GoneReport(appid, GoneAlive)
		e.log.Info("authorization alive after a downstream answer said it was gone: the refresh succeeded and the tokens rotated",
			zapApp(appid), zap.Uint64("generation", tok.Generation))
	case KindOf(err) == KindUnauthorized:
		e.obs.GoneReport(appid, GoneConfirmed) // failedLocked logged it
	default:
		e.obs.GoneReport(appid, GoneUnverified)
		e.log.Warn("could not verify a downstream answer saying the authorization is gone: the refresh failed; the token keeps serving until it expires",
			zapApp(appid), zapErr(err))
	}
}
