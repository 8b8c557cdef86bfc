package tptoken

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// What tptoken_events does with requests it does not act on: it counts them
// (caddy_tptoken_events_refused_total) and logs them at most once per
// refusalLogEvery per reason, each line saying how many were left out since the
// previous one, so a flood from the internet costs a few log lines, not one each.

// Kinds and reasons of the refusal counter and log.
const (
	kindPush     = "push"
	kindRedirect = "redirect"

	// Pushes.
	reasonTooLarge   = "too_large"  // body over 64 KiB
	reasonUnreadable = "unreadable" // the body could not be read
	reasonSignature  = "signature"  // MsgSignature does not verify
	reasonMalformed  = "malformed"  // bad JSON, padding, length or TimeStamp
	reasonAppID      = "appid"      // for another TP
	reasonStale      = "stale"      // TimeStamp outside the window
	reasonDuplicate  = "duplicate"  // handled before (retry or replay): answered success, not acted on
	reasonBadEvent   = "bad_event"  // an authorization event without a valid AppId / code

	// Redirects.
	reasonNoCode         = "no_code"         // no authorization_code
	reasonMalformedCode  = "malformed_code"  // cannot be a platform code
	reasonNoState        = "no_state"        // require_state and no state
	reasonBadState       = "bad_state"       // require_state and a state not issued here, or expired
	reasonFailedRecently = "failed_recently" // the same code failed a moment ago
	reasonBusy           = "busy"            // every redirect call slot in use
	reasonRateLimited    = "rate_limited"    // the redirect exchange budget is spent
	reasonExchangeOff    = "exchange_off"    // redirect_exchanges off, code not known yet
	reasonExchangeFailed = "exchange_failed" // the platform refused the code
	reasonUnavailable    = "unavailable"     // no exchange possible right now (no ticket, platform down)
	reasonConfig         = "config"          // several TPs on one redirect route
)

// refusalLogEvery is the least time between two log lines of one reason.
const refusalLogEvery = 10 * time.Second

var eventsRefused = sync.OnceValue(func() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "events_refused_total",
		Help: "Requests to tptoken_events that were not acted on, by kind (push, redirect) and reason " +
			"(push: too_large, unreadable, signature, malformed, appid, stale, duplicate, bad_event; redirect: no_code, " +
			"malformed_code, no_state, bad_state, failed_recently, busy, rate_limited, exchange_off, exchange_failed, unavailable, config).",
	}, []string{"component_appid", "kind", "reason"})
})

// refusalLog logs refusals, sampled per kind and reason.
type refusalLog struct {
	logger *zap.Logger
	every  time.Duration
	mu     sync.Mutex
	last   map[string]*refusalState // kind/reason: a fixed, small set
}

type refusalState struct {
	at         time.Time
	suppressed int
}

func newRefusalLog(logger *zap.Logger) *refusalLog {
	return &refusalLog{logger: logger, every: refusalLogEvery, last: map[string]*refusalState{}}
}

// refused counts a refusal and logs it unless a line of the same reason was
// written less than `every` ago.
func (l *refusalLog) refused(level zapcore.Level, componentAppID, kind, reason, msg string, fields ...zap.Field) {
	eventsRefused().WithLabelValues(componentAppID, kind, reason).Inc()
	key := kind + "/" + reason
	now := time.Now()
	l.mu.Lock()
	st := l.last[key]
	if st == nil {
		st = &refusalState{}
		l.last[key] = st
	}
	if !st.at.IsZero() && now.Sub(st.at) < l.every {
		st.suppressed++
		l.mu.Unlock()
		return
	}
	n := st.suppressed
	st.at, st.suppressed = now, 0
	l.mu.Unlock()
	if ce := l.logger.Check(level, msg); ce != nil {
		ce.Write(append(fields, zap.String("kind", kind), zap.String("reason", reason),
			zap.Int("suppressed_since_last", n), zap.Duration("sampling", l.every))...)
	}
}
