package emulator

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sort"
	"time"

	"go.uber.org/zap"
)

// Operations, as named in SetFaults, Stats.Calls and the logs.
const (
	OpComponentToken = "component_token"
	OpExchange       = "exchange"
	OpRefresh        = "refresh"
	OpRetrieve       = "retrieve"
	OpAppList        = "app_list"
	OpDownstream     = "downstream"
	OpAll            = "*"
)

var knownOps = map[string]bool{
	OpComponentToken: true, OpExchange: true, OpRefresh: true, OpRetrieve: true,
	OpAppList: true, OpDownstream: true, OpAppAccessToken: true, OpClientToken: true, OpAll: true,
}

// Faults are injected into the platform calls of one operation (or "*": all).
// Counters count down as calls consume them; at most one counter fires per
// call, in the order Down, HTTP5xx, Errno40045, DropResponse. Latency comes
// first and applies to every matching call (also to the faulted ones).
type Faults struct {
	// Latency delays every matching call (real time; the request's context can end it).
	Latency time.Duration
	// Errno40045: the next N calls answer 40045 生成 token 失败,请重试 in the
	// family's envelope, and take no effect.
	Errno40045 int
	// HTTP5xx: the next N calls answer 502, then 503, alternately, with a text
	// body, and take no effect.
	HTTP5xx int
	// DropResponse: the next N calls take effect (a refresh rotates, a code is
	// used) and then the connection is closed without a response.
	DropResponse int
	// Down: every matching call fails at once with 503 until the faults are cleared.
	Down bool
	// RateLimited: every matching app token fetch is refused for rate until
	// the faults are cleared: client_token 10020; app_access_token HTTP 429
	// (its refusal is not documented: an emulator choice).
	RateLimited bool
	// AppID limits the faults to calls about this authorizer ("" = any call).
	// Component-token and app-list calls have no authorizer, so they match only "".
	AppID string
}

func (f Faults) empty() bool {
	return f.Latency == 0 && f.Errno40045 == 0 && f.HTTP5xx == 0 && f.DropResponse == 0 && !f.Down && !f.RateLimited
}

// SetFaults sets (replaces) the faults of op: component_token, exchange,
// refresh, retrieve, app_list, downstream, or "*" for every operation.
func (e *Emulator) SetFaults(op string, f Faults) error {
	if !knownOps[op] {
		return fmt.Errorf("emulator: unknown fault op %q (component_token, exchange, refresh, retrieve, app_list, downstream, app_access_token, client_token or *)", op)
	}
	if f.Latency < 0 || f.Errno40045 < 0 || f.HTTP5xx < 0 || f.DropResponse < 0 {
		return fmt.Errorf("emulator: fault counts and latency must not be negative")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if f.empty() {
		delete(e.faults, op)
	} else {
		e.faults[op] = f
	}
	e.log.Info("faults set", zap.String("op", op), zap.Duration("latency", f.Latency), zap.Int("errno_40045", f.Errno40045),
		zap.Int("http_5xx", f.HTTP5xx), zap.Int("drop_response", f.DropResponse), zap.Bool("down", f.Down),
		zap.Bool("rate_limited", f.RateLimited), zap.String("appid", f.AppID))
	return nil
}

// ClearFaults removes every fault.
func (e *Emulator) ClearFaults() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults = map[string]Faults{}
}

// Faults returns the faults in force, by op.
func (e *Emulator) Faults() map[string]Faults {
	e.mu.Lock()
	defer e.mu.Unlock()
	m := make(map[string]Faults, len(e.faults))
	for k, v := range e.faults {
		m[k] = v
	}
	return m
}

// fault is what to do to one call.
type fault int

const (
	faultNone fault = iota
	faultDown
	fault502
	fault503
	fault40045
	faultDrop
	faultRate
)

// takeFaultLocked picks the fault for a call of op about appid and consumes
// its counter. It also returns the latency to apply.
func (e *Emulator) takeFaultLocked(op, appid string) (fault, time.Duration) {
	var latency time.Duration
	var keys []string
	for _, k := range []string{op, OpAll} {
		f, ok := e.faults[k]
		if ok && (f.AppID == "" || f.AppID == appid) {
			keys = append(keys, k)
			latency = max(latency, f.Latency)
		}
	}
	for _, k := range keys {
		if e.faults[k].Down {
			return faultDown, 0
		}
	}
	for _, k := range keys {
		if e.faults[k].RateLimited && (op == OpAppAccessToken || op == OpClientToken) {
			return faultRate, latency
		}
	}
	take := func(get func(*Faults) *int) bool {
		for _, k := range keys {
			f := e.faults[k]
			if p := get(&f); *p > 0 {
				*p--
				e.faults[k] = f
				return true
			}
		}
		return false
	}
	switch {
	case take(func(f *Faults) *int { return &f.HTTP5xx }):
		e.stats.fault5xx++
		if e.stats.fault5xx%2 == 1 {
			return fault502, latency
		}
		return fault503, latency
	case take(func(f *Faults) *int { return &f.Errno40045 }):
		return fault40045, latency
	case take(func(f *Faults) *int { return &f.DropResponse }):
		return faultDrop, latency
	}
	return faultNone, latency
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// dropWriter collects the response of a call whose response is then dropped.
type dropWriter struct {
	h    http.Header
	code int
	body bytes.Buffer
}

func (d *dropWriter) Header() http.Header {
	if d.h == nil {
		d.h = http.Header{}
	}
	return d.h
}
func (d *dropWriter) Write(b []byte) (int, error) { return d.body.Write(b) }
func (d *dropWriter) WriteHeader(code int)        { d.code = code }

// dropConnection closes the client connection without a response: hijack and
// close on HTTP/1, or abort the handler (HTTP/2 resets the stream).
func dropConnection(w http.ResponseWriter) {
	if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
		conn.Close()
		return
	}
	panic(http.ErrAbortHandler)
}

// Counters are the counts of one authorizer, or of all (Stats.Total).
type Counters struct {
	Exchanges             int64 `json:"exchanges"`               // codes exchanged
	Refreshes             int64 `json:"refreshes"`               // successful refreshes
	Refresh40021          int64 `json:"refresh_40021"`           // refreshes refused with 40021 (a burned or unknown refresh token)
	Retrieves             int64 `json:"retrieves"`               // codes retrieved (找回授权码)
	ComponentTokenFetches int64 `json:"component_token_fetches"` // successful component-token calls (total only)
	ComponentTokensIssued int64 `json:"component_tokens_issued"` // of which returned a new token (total only)
	DownstreamOK          int64 `json:"downstream_ok"`           // downstream calls with a valid token
	DownstreamInvalid     int64 `json:"downstream_invalid"`      // downstream calls with a missing, unknown, expired, revoked or rotated token
	DownstreamForeign     int64 `json:"downstream_foreign"`      // downstream calls with a token of another kind or family
	DownstreamGone        int64 `json:"downstream_gone"`         // downstream calls answered Config.UnauthorizedDownstream (a revoked authorization)
	PushesSent            int64 `json:"pushes_sent"`             // pushes answered "success"
	PushesFailed          int64 `json:"pushes_failed"`           // push attempts that failed
}

// Stats is a snapshot of what the emulator saw.
type Stats struct {
	Total  Counters            `json:"total"`
	PerApp map[string]Counters `json:"per_appid"` // by authorizer appid
	// Calls counts every platform call received, by op, faulted ones included.
	Calls map[string]int64 `json:"calls"`
	// Faulted counts the calls answered by an injected fault, by op.
	Faulted map[string]int64 `json:"faulted"`
	// Apps counts apps' own tokens, by "<appid>/<kind>" (AppToken).
	Apps map[string]AppCounters `json:"apps"`
}

type statsState struct {
	total    Counters
	perApp   map[string]*Counters
	calls    map[string]int64
	faulted  map[string]int64
	fault5xx int
	apps     map[appCounterKey]*AppCounters
}

func newStatsState() statsState {
	return statsState{perApp: map[string]*Counters{}, calls: map[string]int64{}, faulted: map[string]int64{},
		apps: map[appCounterKey]*AppCounters{}}
}

// countLocked applies f to the total and, for a non-empty appid, to its counters.
func (e *Emulator) countLocked(appid string, f func(*Counters)) {
	f(&e.stats.total)
	if appid == "" {
		return
	}
	c := e.stats.perApp[appid]
	if c == nil {
		c = &Counters{}
		e.stats.perApp[appid] = c
	}
	f(c)
}

// Stats returns a snapshot of the counters.
func (e *Emulator) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := Stats{Total: e.stats.total, PerApp: map[string]Counters{}, Calls: map[string]int64{}, Faulted: map[string]int64{},
		Apps: e.appStatsLocked()}
	for k, v := range e.stats.perApp {
		s.PerApp[k] = *v
	}
	for k, v := range e.stats.calls {
		s.Calls[k] = v
	}
	for k, v := range e.stats.faulted {
		s.Faulted[k] = v
	}
	return s
}

// App returns the counters of one authorizer (zero if none).
func (s Stats) App(appid string) Counters { return s.PerApp[appid] }

// sortedOps lists ops for stable output.
func sortedOps(m map[string]Faults) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
