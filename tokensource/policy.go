package tokensource

import (
	"math/rand/v2"
	"time"
)

// The engine's timing policy: when a token is fresh, usable or due, when the
// background loop renews ahead of requests, how long bad answers are trusted,
// how failures back off, and what budgets bound rejections and operators.
// Every decision of when to renew, retry or refuse is in this file, each with
// why; the request path (obtain), the background loop (maintain, sweep) and
// the component token all decide with these functions, so that what the loop
// queues is what obtain acts on (policy_test.go holds them to it). I/O
// timeouts, and how long the memories of untrusted input last (handled
// pushes, exchanged codes, failed codes), stay with the code they bound.

// Defaults of Config's durations.
const (
	// defaultRefreshAhead: access tokens live 2 hours; renewing 10 minutes
	// ahead leaves room for several failed attempts while the current token
	// still serves.
	defaultRefreshAhead = 10 * time.Minute
	// defaultRefreshTokenMargin: a refresh token lives 30 days and dies unused;
	// renewing it 3 days ahead survives a long weekend of outage.
	defaultRefreshTokenMargin = 72 * time.Hour
	// defaultLockTimeout: FileStorage declares a crashed holder's lock stale
	// after 10 s, so waiting 15 s outlasts one dead holder.
	defaultLockTimeout = 15 * time.Second
	// defaultRetryBase, defaultRetryMax: the platform's transient errors (40045,
	// 5xx) clear within seconds; 30 s caps the wait while it is down.
	defaultRetryBase = 500 * time.Millisecond
	defaultRetryMax  = 30 * time.Second
	// defaultSyncInterval: a push handled by another instance (a revocation, a
	// new code) is seen by this one within 30 s, at one storage read per
	// authorizer and interval.
	defaultSyncInterval = 30 * time.Second
	// defaultRedirectWindow: the redirect exchange budget refills over an hour.
	defaultRedirectWindow = time.Hour
	// defaultPushWindow: the platform retries a push for minutes; a clock off
	// by more than 10 minutes is a misconfiguration to report, not to absorb.
	defaultPushWindow = 10 * time.Minute
	// defaultMaintainInterval: cached authorizers are checked every 15 s, a
	// quarter of the longest background lead (a minute), so no lead is missed.
	defaultMaintainInterval = 15 * time.Second
	// defaultSweepInterval: every record is read every 10 minutes, which finds
	// a refresh token due days (RefreshTokenMargin) before it dies.
	defaultSweepInterval = 10 * time.Minute
	// defaultActiveWindow: an authorizer used within the hour is refreshed
	// ahead of requests; an idle one is refreshed on its next request.
	defaultActiveWindow = time.Hour
	// defaultAppGrace: the platform keeps an app's previous token 5 minutes
	// after a new one is fetched (docs/protocol.md §App credentials).
	defaultAppGrace = 5 * time.Minute
)

// Access tokens: fresh, usable, and the margins that decide them.

// margins computes when a token issued at issued is refreshed (refreshAt) and
// when it is no longer sent (unusableAt). The refresh point is ahead before
// expiry, but at most half the lifetime (a short-lived token still serves for
// half its life); tokens are not sent in the last tenth of their life (at most
// 30 s), so a request in flight never carries an expired token.
func margins(issued, expiry time.Time, ahead time.Duration) (refreshAt, unusableAt time.Time) {
	life := expiry.Sub(issued)
	if life <= 0 {
		return expiry, expiry
	}
	skew := min(30*time.Second, life/10)
	ahead = min(ahead, life/2)
	return expiry.Add(-ahead), expiry.Add(-skew)
}

// usable: the token may be sent now. A token only reported rejected by a
// downstream answer may well be valid: it stays usable until it expires.
func (en *entry) usable(now time.Time) bool {
	return en != nil && en.tok.Value != "" && !(en.confirmed && en.tok.Value == en.suspect) && now.Before(en.unusableAt)
}

// fresh: the token may be sent and needs no refresh (nor a check after a
// reported rejection) yet. It is the hot path of every request.
func (en *entry) fresh(now time.Time) bool {
	return en != nil && en.tok.Value != "" && en.tok.Value != en.suspect && now.Before(en.unusableAt) && now.Before(en.refreshAt)
}

// syncDue: a cached token still serves, but its record is reloaded from
// storage (in the background) once older than SyncInterval, so that a push
// handled by another instance is seen here.
func (e *Engine) syncDue(en *entry, now time.Time) bool {
	return now.Sub(en.checkedAt) > e.cfg.SyncInterval
}

// Settled answers: a record known bad (unauthorized, the other family) or
// missing is answered from memory, without I/O, for a while after storage
// confirmed it. A bad state is read again after settledFor, so a new
// authorization handled by another instance is seen within it; a missing
// record after settledMissingFor, as it is usually being authorized right now.
const (
	settledFor        = 30 * time.Second
	settledMissingFor = 5 * time.Second
)

// settledError is the error to answer for en without I/O, or nil when the
// caller must go through obtain.
func (e *Engine) settledError(appid string, en *entry, now time.Time) error {
	if en == nil {
		return nil
	}
	recheck := settledFor
	if en.rec == nil {
		recheck = settledMissingFor
	}
	if now.Sub(en.checkedAt) > recheck {
		return nil
	}
	return e.stateError(appid, en)
}

// Renewals: who asks (mode), and when each asker's renewal is due.

// mode says who asks obtain for a token, and so when it renews.
type mode int

const (
	onDemand     mode = iota // a request: renew when the token is not fresh
	ahead                    // background: renew within the background lead of the refresh point
	renewRefresh             // background: renew when the refresh token nears its expiry
	forced                   // operator: renew unless another instance did meanwhile
)

// key is the single-flight key of mode m's obtain for appid: each mode runs
// once at a time per appid, and its callers share the result.
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

// due reports whether en needs renewing in mode m. seen is the generation the
// caller saw before waiting (forced mode: renew unless it changed meanwhile).
func (e *Engine) due(m mode, en *entry, now time.Time, seen uint64) bool {
	switch m {
	case ahead:
		return en.dueAhead(now, 1) // the longest lead: every job maintain queued is honoured
	case renewRefresh:
		return !en.fresh(now) || e.refreshTokenDue(en.rec, now)
	case forced:
		return en.rec.Generation == seen || !en.usable(now)
	}
	return !en.fresh(now)
}

// backgroundLead: background refreshes start this long (up to 1.5 times this
// long) before the refresh point, so requests never wait for one: a tenth of
// the token's life, at most a minute.
func backgroundLead(en *entry) time.Duration {
	if en == nil || en.rec == nil {
		return 0
	}
	return min(time.Minute, en.rec.AccessExpiry.Sub(en.rec.AccessIssued)/10)
}

// dueAhead reports whether a background refresh of en is due at now, with a
// lead between backgroundLead and 1.5 times it that u in [0, 1] picks. The
// background loop draws u at random, so instances do not all try at once;
// obtain uses u = 1, the longest lead, so it acts on every job the loop queued.
func (en *entry) dueAhead(now time.Time, u float64) bool {
	lead := backgroundLead(en)
	return !en.fresh(now.Add(lead + time.Duration(u*float64(lead/2))))
}

// The sweep of storage runs every SweepInterval ±10%, the first one after a
// random delay of up to a minute: instances started together do not sweep
// together.
func (e *Engine) firstSweepIn() time.Duration {
	return time.Duration(rand.Int64N(int64(min(e.cfg.SweepInterval, time.Minute)) + 1))
}

func (e *Engine) nextSweepIn() time.Duration {
	jitter := time.Duration(rand.Int64N(int64(e.cfg.SweepInterval)/5 + 1))
	return e.cfg.SweepInterval - e.cfg.SweepInterval/10 + jitter
}

// What the background loop queues. Each predicate is made of the tests obtain
// (or obtainComponent) itself makes before taking the lock, with a lead u ≤ 1
// picks, so that obtain acts on every job queued: the loop never queues work
// the request path would refuse (policy_test.go).

// queuesAhead reports whether the background loop queues an ahead job for a
// cached authorizer (maintain): an active record of the engine's family, no
// backoff running, that is unsaved (obtain writes it first) or, with traffic
// within ActiveWindow, within the background lead u picks.
func (e *Engine) queuesAhead(en *entry, now, used time.Time, u float64) bool {
	if en.rec == nil || en.rec.State != StateActive || en.rec.Family != e.family || now.Before(en.retryAt) {
		return false
	}
	return en.dirty || now.Sub(used) <= e.cfg.ActiveWindow && en.dueAhead(now, u)
}

// queuesComponentAhead reports whether the background loop fetches the
// component token (maintain): once a ticket arrived or a token is known,
// within the background lead u picks, no backoff running.
func (e *Engine) queuesComponentAhead(en *entry, now time.Time, u float64) bool {
	if en == nil {
		return e.ticket.Load() != nil
	}
	return en.dueAhead(now, u) && !now.Before(en.retryAt)
}

// queuesRenewal reports whether the sweep queues a refresh-token renewal for
// a stored record: one of the engine's family whose refresh token is due (or
// lost), unless a backoff runs for it on this instance (cached).
func (e *Engine) queuesRenewal(rec *record, cached *entry, now time.Time) bool {
	return rec.Family == e.family && e.refreshTokenDue(rec, now) && (cached == nil || !now.Before(cached.retryAt))
}

// idleAfter: a cached authorizer unused this long is dropped from memory (the
// sweep still renews its refresh token); never sooner than an hour, so an
// authorizer used every few minutes stays cached.
func (e *Engine) idleAfter() time.Duration { return max(e.cfg.ActiveWindow, time.Hour) }

// Refresh tokens.

// defaultRefreshLife is assumed when the platform omits refresh_expires_in: the
// documented 30 days.
const defaultRefreshLife = 30 * 24 * time.Hour

// refreshTokenDue: the refresh token must be used before RefreshTokenMargin
// (at most half its life) is left, or the record waits for a recovery. A lost
// or rejected refresh token is due at once (recovery).
func (e *Engine) refreshTokenDue(rec *record, now time.Time) bool {
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

// needsRecovery: the record's refresh token cannot be used (lost, rejected or
// expired): a renewal retrieves a new code instead of refreshing.
func needsRecovery(rec *record, now time.Time) bool {
	return rec.State == StateNeedsRecovery || rec.RefreshToken == "" || (!rec.RefreshExpiry.IsZero() && !now.Before(rec.RefreshExpiry))
}

// The component token and its ticket.
const (
	// componentRefreshAhead: a component token is fetched again this long before
	// it expires (capped at half its life). v1 returns the same token until less
	// than 30 minutes remain, so fetching earlier would only return the same token.
	componentRefreshAhead = 20 * time.Minute
	// ticketStaleAfter: the platform pushes a ticket every 10 minutes and each is
	// valid 3 hours; an older stored ticket means pushes are not arriving.
	ticketStaleAfter = 3 * time.Hour
)

// Single tokens (single.go): the component token and app tokens.

// due reports whether a single token needs fetching in mode m (onDemand,
// ahead, forced); seen is the generation a forced caller saw before waiting:
// an operator's fetch is made unless another instance fetched meanwhile.
func (s *single) due(m mode, en *entry, now time.Time, seen uint64) bool {
	switch m {
	case ahead:
		return en.dueAhead(now, 1)
	case forced:
		return en == nil || en.rec == nil || en.rec.Generation == seen || !en.usable(now)
	}
	return !en.fresh(now)
}

// syncDue: a cached single token still serves, but is reloaded from storage
// (in the background) once older than syncEvery, so that every instance
// moves to a token another one fetched well within the grace the platform
// leaves the previous one.
func (s *single) syncDue(en *entry, now time.Time) bool { return now.Sub(en.checkedAt) > en.syncEvery }

// syncEvery is SyncInterval, at most half the grace and a tenth of the
// token's life: with the defaults 30 s (a 2-hour token, 5 minutes of grace);
// a 6-second test token with 2 s of grace is reloaded every 0.6 s. Each
// entry keeps its own (newEntry), off the request path.
func (s *single) syncEvery(en *entry) time.Duration {
	d := s.syncInterval
	if s.grace > 0 {
		d = min(d, s.grace/2)
	}
	if life := tokenLife(en); life > 0 {
		d = min(d, life/10)
	}
	return d
}

// tokenLife is the life of en's token as issued (0 when unknown).
func tokenLife(en *entry) time.Duration {
	if en == nil || en.rec == nil {
		return 0
	}
	return en.rec.AccessExpiry.Sub(en.rec.AccessIssued)
}

// cutAt is when a token stops being sent after a fetch that may have taken
// effect unseen (a timeout, a connection broken after sending) started at
// attempt: the platform then keeps the previous token only grace longer, so
// it is sent until that, less the skew of margins.
func cutAt(attempt time.Time, grace time.Duration, rec *record) time.Time {
	skew := 30 * time.Second
	if rec != nil {
		if life := rec.AccessExpiry.Sub(rec.AccessIssued); life > 0 {
			skew = min(skew, life/10)
		}
	}
	return attempt.Add(grace - skew)
}

// An app token's fetch refused for rate (10020: more than 500 fetches of the
// client_key in 5 minutes, by every system fetching it) is not retried at
// once: the next attempt waits a tenth of the token's life (at most a
// minute), doubling up to the platform's window (5 minutes, at most half the
// life). The current token serves meanwhile, until it may no longer be sent.
const (
	rateRetryFirst = time.Minute
	rateWindow     = 5 * time.Minute
)

// retryIn is the backoff after the failures-th failed fetch of a single token.
func (s *single) retryIn(en *entry, cause error) time.Duration {
	if classify(cause) != classRateLimited {
		return s.backoff(en.failures)
	}
	first, most := rateRetryFirst, rateWindow
	if life := tokenLife(en); life > 0 {
		first, most = min(first, life/10), min(most, life/2)
	}
	d := first
	for i := 1; i < en.failures && d < most; i++ {
		d *= 2
	}
	d = min(d, most)
	return d - d/5 + time.Duration(rand.Int64N(int64(d)/5+1))*2
}

// queuesAhead reports whether an app token's background loop (Run) fetches
// it now: a token known and sendable, used within activeWindow, within the
// background lead u picks (as for authorizers), no backoff running; or one
// only memory holds (written first).
func (s *single) queuesAhead(en *entry, now, used time.Time, activeWindow time.Duration, u float64) bool {
	if en == nil || en.rec == nil || now.Before(en.retryAt) {
		return false
	}
	return en.dirty || en.tok.Value != "" && now.Sub(used) <= activeWindow && en.dueAhead(now, u)
}

// maintainEvery is how often an app token's background loop looks at it:
// MaintainInterval, at most a tenth of the token's life, so that no lead is
// missed.
func maintainEvery(en *entry, interval time.Duration) time.Duration {
	if life := tokenLife(en); life > 0 {
		return min(interval, life/10)
	}
	return interval
}

// Failures.

// backoff is the delay before attempt n (1-based) of a failing platform call,
// and after a failed renewal before the next one for the same token:
// RetryBase doubling up to RetryMax, jittered ±20% so instances spread out.
func (b *base) backoff(n int) time.Duration {
	d := b.limits.retryBase
	for i := 1; i < n && d < b.limits.retryMax; i++ {
		d *= 2
	}
	d = min(d, b.limits.retryMax)
	j := time.Duration(rand.Int64N(int64(d)/5+1)) * 2
	return d - d/5 + j
}

// Locks.

// defaultOpTimeout bounds one whole operation, and so how long any holder
// keeps a lock: the wait for the lock, every attempt's call, and 5 s to store.
func defaultOpTimeout(lockTimeout time.Duration, attempts int, callTimeout time.Duration) time.Duration {
	return lockTimeout + time.Duration(attempts)*callTimeout + 5*time.Second
}

// lockAttempt: a wait for a storage lock is cut into attempts this long; after
// each, a store that can tell an abandoned lock (LockBreaker) is asked to
// break it.
const lockAttempt = time.Second

// abandonedAfter: no engine holds a lock longer than OpTimeout, so a lock
// taken longer ago than that (plus one attempt) has no live holder.
func (b *base) abandonedAfter() time.Duration { return b.limits.opTimeout + lockAttempt }

// Downstream rejections (reject.go applies them).
const (
	// rejectInterval: a token is acted on at most once per interval when
	// downstream answers report it rejected. A genuine rejection (a revoked
	// token, or one another instance rotated away) is settled by one reload or
	// renewal, whose replay follows within a second; a token rejected again
	// within a minute of being obtained is not the problem. A minute is also
	// twice the longest retry backoff (RetryMax, 30s), so a renewal that failed
	// is retried once its backoff is over, and at most 60 times an hour while
	// the platform fails.
	rejectInterval = time.Minute
	// breakerOpenFor: while answers keep rejecting fresh tokens, one renewal per
	// 10 minutes (6 an hour per authorizer) is all they can cause; a real
	// platform-side fault heals by itself within that time, and tokens (2 h
	// lives, renewed refresh_ahead before expiry) never need it in between.
	breakerOpenFor = 10 * time.Minute
)

// onReport decides what a downstream report of sent does at now (r.mu held):
// nothing while the breaker is open, nothing when the same token was acted on
// less than rejectInterval ago, else the token is dropped (and r remembers it).
func (r *rejections) onReport(sent Secret, now time.Time) (result string) {
	switch {
	case now.Before(r.openUntil):
		return RejectBreakerOpen
	case r.lastSent == sent && now.Sub(r.lastAt) < rejectInterval:
		return RejectThrottled
	}
	r.lastSent, r.lastAt = sent, now
	return RejectInvalidated
}

// onRenewal decides whether a reported token tok may be renewed at now (r.mu
// held): not while the breaker is open; and a token that a report-driven
// renewal obtained less than rejectInterval ago trips the breaker for
// breakerOpenFor instead.
func (r *rejections) onRenewal(tok Secret, now time.Time) (allow, tripped bool) {
	switch {
	case now.Before(r.openUntil):
		return false, false
	case r.renewed == tok && now.Sub(r.renewedAt) < rejectInterval:
		r.openUntil = now.Add(breakerOpenFor)
		return false, true
	}
	return true, false
}

// Operator-forced operations (forced refreshes and recoveries) each spend a
// single-use refresh token or retrieve a new code: a script looping over
// `caddy tptoken refresh` must not turn into a platform call per iteration.
// Each authorizer has a budget of forcedMax per forcedWindow, kept in its
// record (ForcedAt), so it holds cluster-wide at no extra storage cost: the
// check runs under the authorizer's lock on the record just reloaded, and the
// record is written anyway by the operation it allows.
const (
	forcedMax    = 3
	forcedWindow = 10 * time.Minute

	// Recoveries of appids with no record (Recover with allowNew) have no
	// record to keep a budget in: they are limited per engine instead.
	newAppRecoveryBurst = 5
	newAppRecoveryEvery = 10 * time.Second
)

// forcedWait is how long until rec allows another forced operation (0: now).
func forcedWait(rec *record, now time.Time) time.Duration {
	n := 0
	var oldest time.Time
	for _, t := range rec.ForcedAt {
		if now.Sub(t) < forcedWindow && !t.After(now) {
			n++
			if oldest.IsZero() || t.Before(oldest) {
				oldest = t
			}
		}
	}
	if n < forcedMax {
		return 0
	}
	return max(oldest.Add(forcedWindow).Sub(now), time.Second)
}

// withForced is a copy of r that records a forced operation at now (and
// forgets those outside the window).
func (r *record) withForced(now time.Time) *record {
	c := r.clone()
	c.ForcedAt = c.ForcedAt[:0]
	for _, t := range r.ForcedAt {
		if now.Sub(t) < forcedWindow && !t.After(now) {
			c.ForcedAt = append(c.ForcedAt, t)
		}
	}
	c.ForcedAt = append(c.ForcedAt, now)
	return c
}
