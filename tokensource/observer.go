package tokensource

import (
	"errors"
	"strconv"
	"time"
)

// Observer receives the engine's events, for metrics. Lookup is called on the
// request path: implementations must be cheap and must not block.
type Observer interface {
	// Lookup: a Token or ComponentToken call ended. result is "hit" (served from
	// memory), "obtained" (through the slow path) or "error". appid is "" for the
	// component token.
	Lookup(appid, result string)
	// PlatformCall: one call to the platform ended; result is "ok", the
	// platform code ("40021"), "malformed", "http_<status>", "timeout" or
	// "network", cause CauseLive or CauseImport. appid is "" for a component-token call
	// and for an appid not confirmed yet (see opTag).
	PlatformCall(op, appid, cause, result string, took time.Duration)
	// Recovery: a retrieve-code recovery ended (appid and cause as for PlatformCall).
	Recovery(appid, cause string, ok bool)
	// Rejection: a downstream answer rejected a token (Invalidate), and result
	// says what came of it: RejectInvalidated, RejectThrottled,
	// RejectBreakerTripped or RejectBreakerOpen. appid is "" for the component token.
	Rejection(appid, result string)
	// GoneReport: a downstream answer said the authorization of appid is gone
	// (ReportGone). result says what came of the answer (RejectInvalidated: the
	// next use verifies it; RejectThrottled; RejectBreakerOpen) and then of the
	// refresh verifying it (GoneConfirmed, GoneAlive, GoneUnverified, or
	// RejectBreakerTripped instead of a refresh).
	GoneReport(appid, result string)
	// RebuildResult: a rebuild (trigger RebuildByOperator or RebuildOnEmpty)
	// reached a result (RebuildRebuilt, ...) for one authorizer.
	RebuildResult(trigger, result string)
	// RebuildDone: a rebuild ended with outcome "ok" (nothing failed),
	// "failed" or "interrupted".
	RebuildDone(trigger, outcome string)
}

type nopObserver struct{}

func (nopObserver) RebuildResult(string, string) {}
func (nopObserver) RebuildDone(string, string)   {}

func (nopObserver) Lookup(string, string)                                      {}
func (nopObserver) PlatformCall(string, string, string, string, time.Duration) {}
func (nopObserver) Recovery(string, string, bool)                              {}
func (nopObserver) Rejection(string, string)                                   {}
func (nopObserver) GoneReport(string, string)                                  {}

// callResult names the outcome of a platform call with bounded cardinality:
// "ok", the platform code ("40021"), "http_<status>", "timeout" or "network".
func callResult(err error) string {
	if err == nil {
		return "ok"
	}
	var pe *PlatformError
	if errors.As(err, &pe) {
		if pe.Code != 0 {
			return strconv.Itoa(pe.Code)
		}
		if pe.HTTPStatus == 200 {
			return "malformed"
		}
		return "http_" + strconv.Itoa(pe.HTTPStatus)
	}
	if isTimeout(err) {
		return "timeout"
	}
	return "network"
}
