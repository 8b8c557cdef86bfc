package tptoken

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// Metrics. The counters and the histogram are made once per process and
// registered into each config's registry (ctx.GetMetricsRegistry()), so they
// keep counting across reloads, as Caddy's reverse_proxy metrics do. Gauges of
// state (authorizers by state, earliest refresh-token expiry, ticket age) are
// read at scrape time by a collector bound to the config's components.
//
// Labels are bounded: component_appid, op, cause, result, state. An appid label
// exists only on the *_authorizer_* series, made only when the app sets
// metrics_per_appid. No token or secret is ever a label value: the observer
// is handed appids, operation names and result codes only.

const (
	metricsNamespace = "caddy"
	metricsSubsystem = "tptoken"
)

// metricSet is every collector tptoken exports. The process has one
// (defaultMetrics); tests make their own.
type metricSet struct {
	lookups          *prometheus.CounterVec   // component_appid, token, result
	lookupsPerApp    *prometheus.CounterVec   // component_appid, appid, result
	calls            *prometheus.CounterVec   // component_appid, op, cause, result
	callsPerApp      *prometheus.CounterVec   // component_appid, appid, op, result
	callDuration     *prometheus.HistogramVec // component_appid, op
	replays          *prometheus.CounterVec   // component_appid, token, result
	recoveries       *prometheus.CounterVec   // component_appid, cause, result
	recoveriesPerApp *prometheus.CounterVec   // component_appid, appid, result
	importRows       *prometheus.CounterVec   // component_appid, result
	notInjected      *prometheus.CounterVec   // component_appid
	loops            *prometheus.CounterVec   // component_appid
	rejections       *prometheus.CounterVec   // component_appid, token, result
	goneReports      *prometheus.CounterVec   // component_appid, result
	unbuffered       *prometheus.CounterVec   // component_appid
	storageCheck     *prometheus.GaugeVec     // guarantee, verdict: the last check-storage
	storageCheckAt   *prometheus.GaugeVec     // no labels: absent before the first check
	storageTakeover  *prometheus.GaugeVec     // no labels: absent before the first check
	rebuildRuns      *prometheus.CounterVec   // component_appid, trigger, result
	rebuildResults   *prometheus.CounterVec   // component_appid, trigger, result
	rebuildSuccess   *prometheus.GaugeVec     // component_appid

	comps sync.Map // component appid -> *componentMetrics
	apps  sync.Map // "<appid>/<kind>" -> *appMetrics (metrics_apps.go)
}

// Lookup results (tokensource.Observer) and replay results.
const (
	lookupHit      = "hit"
	lookupObtained = "obtained"
	lookupError    = "error"

	replayReplayed     = "replayed"
	replayNoFreshToken = "no_fresh_token"
)

func newMetricSet() *metricSet {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help,
		}, labels)
	}
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help}, labels)
	}
	return &metricSet{
		storageCheck: gauge("storage_check",
			"The verdict of each guarantee in the last complete `caddy tptoken check-storage` of this process: 1 for the verdict it got (pass, warn, skipped, fail), 0 for the others.",
			"guarantee", "verdict"),
		storageCheckAt: gauge("storage_check_timestamp_seconds", "Unix time of the end of the last complete `caddy tptoken check-storage` of this process."),
		storageTakeover: gauge("storage_takeover_seconds",
			"Seconds the last complete `caddy tptoken check-storage` took to take over a lock whose holder process was killed (0: not measured)."),
		lookups: counter("token_lookups_total",
			"Token lookups by the tptoken handler and transport, by token kind (authorizer, component; an app's own client_token, app_access_token, with the app's appid as component_appid) and result (hit: from memory; obtained: through a storage read or a platform call; error).",
			"component_appid", "token", "result"),
		lookupsPerApp: counter("authorizer_token_lookups_total",
			"Authorizer token lookups by appid and result (hit, obtained); only with metrics_per_appid.",
			"component_appid", "appid", "result"),
		calls: counter("platform_calls_total",
			"Calls to the platform's token endpoints by op (component_token, exchange, refresh, retrieve, app_list; client_token, app_access_token: an app's own token, with the app's appid as component_appid), cause (live; import: rows of an import of legacy refresh tokens; rebuild: authorizers a rebuild works on) and result (ok, a platform errno, http_<status>, timeout, network, malformed).",
			"component_appid", "op", "cause", "result"),
		callsPerApp: counter("authorizer_platform_calls_total",
			"Calls to the platform's token endpoints about one authorizer, by appid, op and result; only with metrics_per_appid.",
			"component_appid", "appid", "op", "result"),
		callDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "platform_call_duration_seconds",
			Help:    "Duration of one call to the platform's token endpoints, by op (each attempt of a retried call counts once).",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"component_appid", "op"}),
		replays: counter("replays_total",
			"Upstream answers that rejected the injected token, by token kind (authorizer, component, client_token, app_access_token) and result: replayed (once, with a fresh token) or no_fresh_token (answer passed through).",
			"component_appid", "token", "result"),
		recoveries: counter("recoveries_total",
			"Recoveries of a lost or rejected refresh token (retrieve code + exchange), by cause (live; import: rows of an import of legacy refresh tokens; rebuild: authorizers a rebuild works on) and result (ok, failed).",
			"component_appid", "cause", "result"),
		recoveriesPerApp: counter("authorizer_recoveries_total",
			"Recoveries by appid and result; only with metrics_per_appid.",
			"component_appid", "appid", "result"),
		importRows: counter("import_rows_total",
			"Rows of imports of legacy refresh tokens, by result (imported, recovered, unchanged, skipped, failed).",
			"component_appid", "result"),
		notInjected: counter("requests_not_injected_total",
			"Requests a tptoken handler resolved a token for that reached a reverse_proxy without `transport tptoken`: refused with 502, never sent without their token.",
			"component_appid"),
		loops: counter("request_loops_total",
			"Requests refused because a tptoken transport had sent them already: an upstream name resolves to this sidecar (README: Drop-in).",
			"component_appid"),
		rejections: counter("token_rejections_total",
			"Upstream answers that rejected the current token, by token kind (authorizer, component, client_token, app_access_token) and what came of it: invalidated (reloaded, renewed if still current), throttled (the same token was acted on less than a minute ago), breaker_tripped (a token just renewed because of such an answer was rejected again: such answers renew nothing for 10 minutes), breaker_open (ignored meanwhile).",
			"component_appid", "token", "result"),
		goneReports: counter("downstream_gone_total",
			"Upstream answers saying an authorizer's authorization is gone (v1 errno 40022/40004; v2 err_no 40022/40004/28001014/28001016), by what came of them: invalidated (the next use verifies it with one refresh), throttled (the same token was acted on less than a minute ago), breaker_open (ignored meanwhile); then by what that refresh found: confirmed (the platform confirmed it: the authorizer is marked unauthorized), alive (the tokens rotated, nothing lost), unverified (the refresh failed: the token keeps serving), breaker_tripped (no refresh: a token just renewed because of such an answer was reported again).",
			"component_appid", "result"),
		unbuffered: counter("replay_buffer_full_total",
			"Request bodies streamed without a replay because max_replay_memory was taken by requests in flight.",
			"component_appid"),
		rebuildRuns: counter("rebuild_runs_total",
			"Rebuilds from the platform's authorized-app list, by trigger (operator: caddy tptoken rebuild or the admin API; auto: rebuild_on_empty) and result (ok: nothing failed; failed: some authorizer failed, was busy or unreadable, or the list could not be read; interrupted).",
			"component_appid", "trigger", "result"),
		rebuildResults: counter("rebuild_authorizers_total",
			"Authorizers a rebuild reached a result for, by trigger and result (rebuilt, unchanged, refreshed, recovered, not_authorized, skipped_unreadable, skipped_other_family, busy, failed, not_listed).",
			"component_appid", "trigger", "result"),
		rebuildSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "rebuild_last_success_timestamp_seconds",
			Help: "Unix time of the last rebuild on this instance in which nothing failed.",
		}, []string{"component_appid"}),
	}
}

// collectors lists the set's collectors; the per-appid ones only when asked,
// so a config without metrics_per_appid exports none of their past series.
func (s *metricSet) collectors(perAppID bool) []prometheus.Collector {
	cs := []prometheus.Collector{s.lookups, s.calls, s.callDuration, s.replays, s.recoveries, s.importRows, s.notInjected, s.loops, s.rejections, s.goneReports, s.unbuffered,
		s.storageCheck, s.storageCheckAt, s.storageTakeover, s.rebuildRuns, s.rebuildResults, s.rebuildSuccess}
	if perAppID {
		cs = append(cs, s.lookupsPerApp, s.callsPerApp, s.recoveriesPerApp)
	}
	return cs
}

// defaultMetrics is the process's metric set, made on first use.
var defaultMetrics = sync.OnceValue(newMetricSet)

// metricsFor returns the observer of a component (one per component appid per
// process; engines kept across reloads keep theirs).
func metricsFor(componentAppID string) *componentMetrics {
	return defaultMetrics().component(componentAppID)
}

func (s *metricSet) component(appid string) *componentMetrics {
	if v, ok := s.comps.Load(appid); ok {
		return v.(*componentMetrics)
	}
	m := &componentMetrics{set: s, appID: appid, durations: map[string]prometheus.Observer{}}
	for i, kind := range []string{"authorizer", "component"} {
		for j, res := range []string{lookupHit, lookupObtained, lookupError} {
			m.lookup[i][j] = s.lookups.WithLabelValues(appid, kind, res)
		}
	}
	for _, op := range []string{tokensource.OpComponentToken, tokensource.OpExchange, tokensource.OpRefresh,
		tokensource.OpRetrieve, tokensource.OpAppList} {
		m.durations[op] = s.callDuration.WithLabelValues(appid, op)
	}
	for _, kind := range []string{"authorizer", "component"} {
		for _, res := range []string{replayReplayed, replayNoFreshToken} {
			s.replays.WithLabelValues(appid, kind, res) // exported from 0
		}
	}
	s.notInjected.WithLabelValues(appid) // exported from 0 (counted by owner: countNotInjected)
	m.loops = s.loops.WithLabelValues(appid)
	for _, cause := range []string{tokensource.CauseLive, tokensource.CauseImport, tokensource.CauseRebuild} {
		for _, res := range []string{"ok", "failed"} {
			s.recoveries.WithLabelValues(appid, cause, res) // exported from 0, so increase() sees the first one
		}
	}
	v, _ := s.comps.LoadOrStore(appid, m)
	return v.(*componentMetrics)
}

// componentMetrics is the tokensource.Observer of one component. The series
// the hot path touches are resolved once, so a cached-token lookup costs one
// atomic add.
type componentMetrics struct {
	set      *metricSet
	appID    string
	perAppID atomic.Bool // metrics_per_appid of the latest config

	lookup    [2][3]prometheus.Counter // [authorizer, component][hit, obtained, error]
	durations map[string]prometheus.Observer
	loops     prometheus.Counter
}

// Lookup implements tokensource.Observer. It is on the request path.
func (m *componentMetrics) Lookup(appid, result string) {
	kind := 0
	if appid == "" {
		kind = 1
	}
	switch result {
	case lookupHit:
		m.lookup[kind][0].Inc()
	case lookupObtained:
		m.lookup[kind][1].Inc()
	default:
		m.lookup[kind][2].Inc()
	}
	// Errors are not counted per appid: any well-formed appid a client sends
	// would make a series. Hits and obtained tokens exist for real authorizers only.
	if kind == 0 && result != lookupError && m.perAppID.Load() {
		m.set.lookupsPerApp.WithLabelValues(m.appID, appid, result).Inc()
	}
}

// PlatformCall implements tokensource.Observer.
func (m *componentMetrics) PlatformCall(op, appid, cause, result string, took time.Duration) {
	m.set.calls.WithLabelValues(m.appID, op, cause, result).Inc()
	d, ok := m.durations[op]
	if !ok {
		d = m.set.callDuration.WithLabelValues(m.appID, op)
	}
	d.Observe(took.Seconds())
	if appid != "" && m.perAppID.Load() {
		m.set.callsPerApp.WithLabelValues(m.appID, appid, op, result).Inc()
	}
}

// Recovery implements tokensource.Observer.
func (m *componentMetrics) Recovery(appid, cause string, ok bool) {
	res := "ok"
	if !ok {
		res = "failed"
	}
	m.set.recoveries.WithLabelValues(m.appID, cause, res).Inc()
	if appid != "" && m.perAppID.Load() {
		m.set.recoveriesPerApp.WithLabelValues(m.appID, appid, res).Inc()
	}
}

// Rejection implements tokensource.Observer.
func (m *componentMetrics) Rejection(appid, result string) {
	kind := "authorizer"
	if appid == "" {
		kind = "component"
	}
	m.set.rejections.WithLabelValues(m.appID, kind, result).Inc()
}

// GoneReport implements tokensource.Observer.
func (m *componentMetrics) GoneReport(_, result string) {
	m.set.goneReports.WithLabelValues(m.appID, result).Inc()
}

// RebuildResult implements tokensource.Observer.
func (m *componentMetrics) RebuildResult(trigger, result string) {
	m.set.rebuildResults.WithLabelValues(m.appID, trigger, result).Inc()
}

// RebuildDone implements tokensource.Observer.
func (m *componentMetrics) RebuildDone(trigger, outcome string) {
	m.set.rebuildRuns.WithLabelValues(m.appID, trigger, outcome).Inc()
	if outcome == "ok" {
		m.set.rebuildSuccess.WithLabelValues(m.appID).SetToCurrentTime()
	}
}

// replay counts an upstream answer that rejected the injected token of kind.
func (m *componentMetrics) replay(kind string, replayed bool) { m.set.replay(m.appID, kind, replayed) }

func (s *metricSet) replay(owner, kind string, replayed bool) {
	res := replayNoFreshToken
	if replayed {
		res = replayReplayed
	}
	s.replays.WithLabelValues(owner, kind, res).Inc()
}

// importRow counts one row of an import by its result.
func (m *componentMetrics) importRow(result string) {
	m.set.importRows.WithLabelValues(m.appID, result).Inc()
}

// forget drops the per-appid series of an authorizer whose record was deleted.
func (m *componentMetrics) forget(appid string) {
	l := prometheus.Labels{"component_appid": m.appID, "appid": appid}
	m.set.lookupsPerApp.DeletePartialMatch(l)
	m.set.callsPerApp.DeletePartialMatch(l)
	m.set.recoveriesPerApp.DeletePartialMatch(l)
}

// countUnbuffered is the transport's hook: a request body was streamed
// without a replay because the replay memory budget was taken.
func countUnbuffered(componentAppID string) {
	defaultMetrics().unbuffered.WithLabelValues(componentAppID).Inc()
}

// countReplay is the transport's hook: an upstream answer rejected the token
// of kind of a request for owner (a component appid, or an app's); replayed
// says whether it was sent again.
func countReplay(owner, kind string, replayed bool) { defaultMetrics().replay(owner, kind, replayed) }

// Scrape-time gauges.

var (
	descAuthorizers = prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "authorizers"),
		"Authorizer records by state (active, needs_recovery, unauthorized), as found by the last sweep of storage.",
		[]string{"component_appid", "state"}, nil)
	descUnreadable = prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "unreadable_records"),
		"Authorizer records the last sweep could not read or decrypt.",
		[]string{"component_appid"}, nil)
	descEarliestRefresh = prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "earliest_refresh_expiry_seconds"),
		"Seconds until the earliest refresh-token expiry among active authorizers (negative once passed), as of the last sweep.",
		[]string{"component_appid"}, nil)
	descLastSweep = prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "last_sweep_timestamp_seconds"),
		"Unix time of the last sweep of authorizer records.",
		[]string{"component_appid"}, nil)
	descTicketAge = prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "ticket_age_seconds"),
		"Seconds since the newest component_ticket was received (pushed every 10 minutes, valid 3 hours).",
		[]string{"component_appid"}, nil)
	descComponentExpiry = prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "component_token_expiry_seconds"),
		"Seconds until the current component_access_token expires (negative once passed).",
		[]string{"component_appid"}, nil)
)

// stateSource is what the state collector reads of an engine.
type stateSource interface {
	ComponentInfo(ctx context.Context) tokensource.ComponentInfo
}

// stateCollector reports the state of a config's components at scrape time.
type stateCollector struct {
	sources []stateSource
	apps    []tokensource.AppSource // app tokens (metrics_apps.go)
	now     func() time.Time
	timeout time.Duration // bounds the storage reads of one scrape
}

var knownStates = []tokensource.State{tokensource.StateActive, tokensource.StateNeedsRecovery, tokensource.StateUnauthorized}

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAuthorizers, descUnreadable, descEarliestRefresh, descLastSweep, descTicketAge, descComponentExpiry, descAppExpiry} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	now := c.now()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, src := range c.sources {
		ci := src.ComponentInfo(ctx)
		id := ci.ComponentAppID
		// Before the first sweep the counts are unknown: report nothing rather
		// than zeros an alert would take for "no active authorizer".
		if sum := ci.Sweep; sum != nil {
			for _, st := range knownStates {
				gauge(descAuthorizers, float64(sum.ByState[st]), id, string(st))
			}
			for st, n := range sum.ByState {
				if st != tokensource.StateActive && st != tokensource.StateNeedsRecovery && st != tokensource.StateUnauthorized {
					gauge(descAuthorizers, float64(n), id, string(st))
				}
			}
			gauge(descUnreadable, float64(sum.Unreadable), id)
			gauge(descLastSweep, float64(sum.At.UnixNano())/1e9, id)
			if !sum.EarliestRefreshExp.IsZero() {
				gauge(descEarliestRefresh, sum.EarliestRefreshExp.Sub(now).Seconds(), id)
			}
		}
		if !ci.TicketReceivedAt.IsZero() {
			gauge(descTicketAge, now.Sub(ci.TicketReceivedAt).Seconds(), id)
		}
		if !ci.TokenExpiry.IsZero() {
			gauge(descComponentExpiry, ci.TokenExpiry.Sub(now).Seconds(), id)
		}
	}
	collectApps(ctx, ch, c.apps, now)
}

// registerMetrics registers the process's collectors and a state collector for
// the app's components into the config's registry, and applies
// metrics_per_appid. A nil registry (caddy validate, tests) means metrics off.
func (a *App) registerMetrics(reg *prometheus.Registry) error {
	set := defaultMetrics()
	for _, id := range a.order {
		set.component(id).perAppID.Store(a.MetricsPerAppID)
	}
	if reg == nil {
		return nil
	}
	sc := &stateCollector{now: time.Now, timeout: 2 * time.Second}
	for _, id := range a.order {
		sc.sources = append(sc.sources, a.comps[id].engine)
	}
	for _, k := range a.appOrder {
		sc.apps = append(sc.apps, a.apps[k].src)
	}
	return registerCollectors(reg, append(set.collectors(a.MetricsPerAppID), sc)...)
}

// registerCollectors registers cs, ignoring those already registered (the
// process-wide collectors are registered again on every config load).
func registerCollectors(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// Interface guards
var (
	_ tokensource.Observer = (*componentMetrics)(nil)
	_ prometheus.Collector = (*stateCollector)(nil)
	_ stateSource          = (*tokensource.Engine)(nil)
)
