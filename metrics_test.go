package tptoken

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// newTestMetrics is a private metric set (the process's set accumulates across
// tests) registered into a fresh pedantic registry, as Caddy makes per config.
func newTestMetrics(t *testing.T, perAppID bool) (*metricSet, *prometheus.Registry) {
	t.Helper()
	set := newMetricSet()
	reg := prometheus.NewPedanticRegistry()
	if err := registerCollectors(reg, set.collectors(perAppID)...); err != nil {
		t.Fatal(err)
	}
	return set, reg
}

func TestObserverCountsLookupsPlatformCallsReplaysAndRecoveries(t *testing.T) {
	set, reg := newTestMetrics(t, false)
	m := set.component("ttcomp")
	m.Lookup("tt01", "hit")
	m.Lookup("tt01", "hit")
	m.Lookup("tt01", "obtained")
	m.Lookup("tt02", "error")
	m.Lookup("", "hit") // component token
	m.PlatformCall(tokensource.OpRefresh, "tt01", "live", "ok", 120*time.Millisecond)
	m.PlatformCall(tokensource.OpRefresh, "tt02", "live", "40021", 80*time.Millisecond)
	m.PlatformCall(tokensource.OpComponentToken, "", "live", "http_502", 3*time.Second)
	m.PlatformCall(tokensource.OpRefresh, "", "import", "40021", 80*time.Millisecond)
	m.Recovery("tt02", "live", true)
	m.Recovery("tt03", "live", false)
	m.Recovery("", "import", false)
	countReplayOn(m, true)
	countReplayOn(m, false)
	countReplayOn(m, true)

	const want = `
# HELP caddy_tptoken_platform_calls_total Calls to the platform's token endpoints by op (component_token, exchange, refresh, retrieve, app_list; client_token, app_access_token: an app's own token, with the app's appid as component_appid), cause (live; import: rows of an import of legacy refresh tokens; rebuild: authorizers a rebuild works on) and result (ok, a platform errno, http_<status>, timeout, network, malformed).
# TYPE caddy_tptoken_platform_calls_total counter
caddy_tptoken_platform_calls_total{cause="import",component_appid="ttcomp",op="refresh",result="40021"} 1
caddy_tptoken_platform_calls_total{cause="live",component_appid="ttcomp",op="component_token",result="http_502"} 1
caddy_tptoken_platform_calls_total{cause="live",component_appid="ttcomp",op="refresh",result="40021"} 1
caddy_tptoken_platform_calls_total{cause="live",component_appid="ttcomp",op="refresh",result="ok"} 1
# HELP caddy_tptoken_recoveries_total Recoveries of a lost or rejected refresh token (retrieve code + exchange), by cause (live; import: rows of an import of legacy refresh tokens; rebuild: authorizers a rebuild works on) and result (ok, failed).
# TYPE caddy_tptoken_recoveries_total counter
caddy_tptoken_recoveries_total{cause="import",component_appid="ttcomp",result="failed"} 1
caddy_tptoken_recoveries_total{cause="import",component_appid="ttcomp",result="ok"} 0
caddy_tptoken_recoveries_total{cause="live",component_appid="ttcomp",result="failed"} 1
caddy_tptoken_recoveries_total{cause="live",component_appid="ttcomp",result="ok"} 1
caddy_tptoken_recoveries_total{cause="rebuild",component_appid="ttcomp",result="failed"} 0
caddy_tptoken_recoveries_total{cause="rebuild",component_appid="ttcomp",result="ok"} 0
# HELP caddy_tptoken_replays_total Upstream answers that rejected the injected token, by token kind (authorizer, component, client_token, app_access_token) and result: replayed (once, with a fresh token) or no_fresh_token (answer passed through).
# TYPE caddy_tptoken_replays_total counter
caddy_tptoken_replays_total{component_appid="ttcomp",result="no_fresh_token",token="authorizer"} 1
caddy_tptoken_replays_total{component_appid="ttcomp",result="no_fresh_token",token="component"} 0
caddy_tptoken_replays_total{component_appid="ttcomp",result="replayed",token="authorizer"} 2
caddy_tptoken_replays_total{component_appid="ttcomp",result="replayed",token="component"} 0
# HELP caddy_tptoken_token_lookups_total Token lookups by the tptoken handler and transport, by token kind (authorizer, component; an app's own client_token, app_access_token, with the app's appid as component_appid) and result (hit: from memory; obtained: through a storage read or a platform call; error).
# TYPE caddy_tptoken_token_lookups_total counter
caddy_tptoken_token_lookups_total{component_appid="ttcomp",result="error",token="authorizer"} 1
caddy_tptoken_token_lookups_total{component_appid="ttcomp",result="error",token="component"} 0
caddy_tptoken_token_lookups_total{component_appid="ttcomp",result="hit",token="authorizer"} 2
caddy_tptoken_token_lookups_total{component_appid="ttcomp",result="hit",token="component"} 1
caddy_tptoken_token_lookups_total{component_appid="ttcomp",result="obtained",token="authorizer"} 1
caddy_tptoken_token_lookups_total{component_appid="ttcomp",result="obtained",token="component"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"caddy_tptoken_token_lookups_total", "caddy_tptoken_platform_calls_total",
		"caddy_tptoken_replays_total", "caddy_tptoken_recoveries_total"); err != nil {
		t.Fatal(err)
	}

	// The histogram has the five known ops resolved up front; the refresh and
	// component_token series saw three and one calls.
	if n := testutil.CollectAndCount(set.callDuration); n != 5 {
		t.Fatalf("duration series = %d, want 5 (one per op)", n)
	}
	if c := histogramCount(t, reg, "caddy_tptoken_platform_call_duration_seconds", "op", "refresh"); c != 3 {
		t.Fatalf("refresh duration count = %d, want 3", c)
	}
	if c := histogramCount(t, reg, "caddy_tptoken_platform_call_duration_seconds", "op", "component_token"); c != 1 {
		t.Fatalf("component_token duration count = %d, want 1", c)
	}
	// No appid label anywhere without metrics_per_appid.
	if n := testutil.CollectAndCount(set.lookupsPerApp) + testutil.CollectAndCount(set.callsPerApp) +
		testutil.CollectAndCount(set.recoveriesPerApp); n != 0 {
		t.Fatalf("%d per-appid series without metrics_per_appid", n)
	}
	assertNoAppIDLabel(t, reg)
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("metric lint: %v %+v", err, problems)
	}
}

func countReplayOn(m *componentMetrics, replayed bool) { m.replay("authorizer", replayed) }

func histogramCount(t *testing.T, reg *prometheus.Registry, name, label, value string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	t.Fatalf("no %s{%s=%q}", name, label, value)
	return 0
}

func assertNoAppIDLabel(t *testing.T, reg prometheus.Gatherer) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "appid" {
					t.Fatalf("%s has an appid label without metrics_per_appid", mf.GetName())
				}
			}
		}
	}
}

func TestPerAppIDMetricsOnlyWhenOptedInAndForgottenWithTheRecord(t *testing.T) {
	set, reg := newTestMetrics(t, true)
	m := set.component("ttcomp")

	m.Lookup("tt01", "hit") // off: counted in the aggregate only
	m.PlatformCall(tokensource.OpRefresh, "tt01", "live", "ok", time.Millisecond)
	if n := testutil.CollectAndCount(set.lookupsPerApp) + testutil.CollectAndCount(set.callsPerApp); n != 0 {
		t.Fatalf("%d per-appid series while metrics_per_appid is off", n)
	}

	m.perAppID.Store(true)
	m.Lookup("tt01", "hit")
	m.Lookup("tt01", "obtained")
	m.Lookup("tt99", "error") // errors are never per appid: any appid a client sends would make a series
	m.Lookup("", "hit")       // component token: no appid
	m.PlatformCall(tokensource.OpRefresh, "tt01", "live", "40021", time.Millisecond)
	m.PlatformCall(tokensource.OpComponentToken, "", "live", "ok", time.Millisecond)
	m.PlatformCall(tokensource.OpRefresh, "", "import", "40021", time.Millisecond) // an appid not confirmed: no series
	m.Recovery("tt01", "live", true)
	const want = `
# HELP caddy_tptoken_authorizer_platform_calls_total Calls to the platform's token endpoints about one authorizer, by appid, op and result; only with metrics_per_appid.
# TYPE caddy_tptoken_authorizer_platform_calls_total counter
caddy_tptoken_authorizer_platform_calls_total{appid="tt01",component_appid="ttcomp",op="refresh",result="40021"} 1
# HELP caddy_tptoken_authorizer_recoveries_total Recoveries by appid and result; only with metrics_per_appid.
# TYPE caddy_tptoken_authorizer_recoveries_total counter
caddy_tptoken_authorizer_recoveries_total{appid="tt01",component_appid="ttcomp",result="ok"} 1
# HELP caddy_tptoken_authorizer_token_lookups_total Authorizer token lookups by appid and result (hit, obtained); only with metrics_per_appid.
# TYPE caddy_tptoken_authorizer_token_lookups_total counter
caddy_tptoken_authorizer_token_lookups_total{appid="tt01",component_appid="ttcomp",result="hit"} 1
caddy_tptoken_authorizer_token_lookups_total{appid="tt01",component_appid="ttcomp",result="obtained"} 1
`
	names := []string{"caddy_tptoken_authorizer_token_lookups_total", "caddy_tptoken_authorizer_platform_calls_total",
		"caddy_tptoken_authorizer_recoveries_total"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}

	// A config without the option does not export the per-appid collectors.
	reg2 := prometheus.NewPedanticRegistry()
	if err := registerCollectors(reg2, set.collectors(false)...); err != nil {
		t.Fatal(err)
	}
	assertNoAppIDLabel(t, reg2)

	// Deleting the record drops its series.
	m.forget("tt01")
	if n, err := testutil.GatherAndCount(reg, names...); err != nil || n != 0 {
		t.Fatalf("after forget: %d per-appid series (%v)", n, err)
	}
}

type fakeState struct{ ci tokensource.ComponentInfo }

func (f *fakeState) ComponentInfo(context.Context) tokensource.ComponentInfo { return f.ci }

func TestStateGaugesReadTheLastSweepAndTheComponentAtScrapeTime(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	swept := &fakeState{tokensource.ComponentInfo{ComponentAppID: "tta", TicketReceivedAt: now.Add(-90 * time.Second),
		TokenExpiry: now.Add(time.Hour), Sweep: &tokensource.Summary{
			At:                 now.Add(-time.Minute),
			ByState:            map[tokensource.State]int{tokensource.StateActive: 40, tokensource.StateUnauthorized: 2},
			EarliestRefreshExp: now.Add(50 * time.Hour), EarliestRefreshApp: "tt07", Unreadable: 1,
		}}}
	fresh := &fakeState{tokensource.ComponentInfo{ComponentAppID: "ttb"}} // no sweep, no ticket yet: nothing to report
	reg := prometheus.NewPedanticRegistry()
	sc := &stateCollector{sources: []stateSource{swept, fresh}, now: func() time.Time { return now }, timeout: time.Second}
	if err := registerCollectors(reg, sc); err != nil {
		t.Fatal(err)
	}
	const want = `
# HELP caddy_tptoken_unreadable_records Authorizer records the last sweep could not read or decrypt.
# TYPE caddy_tptoken_unreadable_records gauge
caddy_tptoken_unreadable_records{component_appid="tta"} 1
# HELP caddy_tptoken_authorizers Authorizer records by state (active, needs_recovery, unauthorized), as found by the last sweep of storage.
# TYPE caddy_tptoken_authorizers gauge
caddy_tptoken_authorizers{component_appid="tta",state="active"} 40
caddy_tptoken_authorizers{component_appid="tta",state="needs_recovery"} 0
caddy_tptoken_authorizers{component_appid="tta",state="unauthorized"} 2
# HELP caddy_tptoken_component_token_expiry_seconds Seconds until the current component_access_token expires (negative once passed).
# TYPE caddy_tptoken_component_token_expiry_seconds gauge
caddy_tptoken_component_token_expiry_seconds{component_appid="tta"} 3600
# HELP caddy_tptoken_earliest_refresh_expiry_seconds Seconds until the earliest refresh-token expiry among active authorizers (negative once passed), as of the last sweep.
# TYPE caddy_tptoken_earliest_refresh_expiry_seconds gauge
caddy_tptoken_earliest_refresh_expiry_seconds{component_appid="tta"} 180000
# HELP caddy_tptoken_last_sweep_timestamp_seconds Unix time of the last sweep of authorizer records.
# TYPE caddy_tptoken_last_sweep_timestamp_seconds gauge
caddy_tptoken_last_sweep_timestamp_seconds{component_appid="tta"} 1.767322985e+09
# HELP caddy_tptoken_ticket_age_seconds Seconds since the newest component_ticket was received (pushed every 10 minutes, valid 3 hours).
# TYPE caddy_tptoken_ticket_age_seconds gauge
caddy_tptoken_ticket_age_seconds{component_appid="tta"} 90
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("metric lint: %v %+v", err, problems)
	}
}

func TestMetricsRegisterOncePerRegistryAndNilRegistryMeansOff(t *testing.T) {
	set := newMetricSet()
	reg := prometheus.NewPedanticRegistry()
	for range 2 { // a second registration (same collectors) is not an error
		if err := registerCollectors(reg, set.collectors(true)...); err != nil {
			t.Fatal(err)
		}
	}
	a := &App{MetricsPerAppID: true, order: []string{"ttnil"}, comps: map[string]*component{"ttnil": {appID: "ttnil"}}}
	if err := a.registerMetrics(nil); err != nil {
		t.Fatal(err)
	}
	if !metricsFor("ttnil").perAppID.Load() {
		t.Fatal("metrics_per_appid was not applied to the component's observer")
	}
	a.MetricsPerAppID = false
	if err := a.registerMetrics(nil); err != nil {
		t.Fatal(err)
	}
	if metricsFor("ttnil").perAppID.Load() {
		t.Fatal("turning metrics_per_appid off on reload did not reach the observer")
	}
}

// The request path pays one atomic add per lookup: no allocation.
func TestLookupHitDoesNotAllocate(t *testing.T) {
	m := newMetricSet().component("ttcomp")
	if n := testing.AllocsPerRun(1000, func() { m.Lookup("tt01app", "hit") }); n != 0 {
		t.Fatalf("Lookup allocates %.1f times", n)
	}
}

func BenchmarkObserverLookupHit(b *testing.B) {
	m := newMetricSet().component("ttcomp")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Lookup("tt01app", "hit")
		}
	})
}

func BenchmarkObserverLookupHitPerAppID(b *testing.B) {
	m := newMetricSet().component("ttcomp")
	m.perAppID.Store(true)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Lookup("tt01app", "hit")
		}
	})
}

// A real run through Caddy: the engine's observer, the transport's replay hook
// and the state collector all reach the config's registry (and the admin
// /metrics), counters survive a reload, and no token is ever exported.
func TestMetricsOnCaddysRegistryFollowARealRunAndReloads(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin(), withGlobal("sweep_interval 1s\n\t\tmetrics_per_appid"))
	set := defaultMetrics()
	series := map[string]prometheus.Collector{
		"hit":       set.lookups.WithLabelValues(e2eComponent, "authorizer", "hit"),
		"obtained":  set.lookups.WithLabelValues(e2eComponent, "authorizer", "obtained"),
		"component": set.lookups.WithLabelValues(e2eComponent, "component", "hit"),
		"exchange":  set.calls.WithLabelValues(e2eComponent, "exchange", "live", "ok"),
		"refresh":   set.calls.WithLabelValues(e2eComponent, "refresh", "live", "ok"),
		"retrieve":  set.calls.WithLabelValues(e2eComponent, "retrieve", "live", "ok"),
		"replayed":  set.replays.WithLabelValues(e2eComponent, "authorizer", "replayed"),
		"recovered": set.recoveries.WithLabelValues(e2eComponent, "live", "ok"),
		"app_hit":   set.lookupsPerApp.WithLabelValues(e2eComponent, "tt01app", "hit"),
	}
	before := map[string]float64{}
	for k, c := range series {
		before[k] = testutil.ToFloat64(c)
	}
	delta := func(k string) float64 { return testutil.ToFloat64(series[k]) - before[k] }

	x.authorize("tt01app")
	for range 3 {
		if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 {
			t.Fatalf("call: %+v", a)
		}
	}
	x.emu.RevokeAccessToken("tt01app", tokensource.V1) // the next call is rejected, refreshed and replayed
	if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 || a.Errno != 0 {
		t.Fatalf("replayed call: %+v", a)
	}
	x.adminJSON("POST", "/tptoken/authorizers/tt01app/recover", "", 200, nil)

	// 4 hits: the rejected request's token came from memory too; the replay's was obtained.
	for k, want := range map[string]float64{"hit": 4, "obtained": 1, "exchange": 2, "refresh": 1, "retrieve": 1,
		"replayed": 1, "recovered": 1, "app_hit": 4} {
		if got := delta(k); got != want {
			t.Errorf("%s: +%v, want +%v", k, got, want)
		}
	}
	if delta("component") < 1 {
		t.Errorf("no component token lookup counted")
	}

	// The sweep (every second here) feeds the state gauges; a sweep that ran
	// before the authorization counted none, so wait for one that sees it.
	reg := activeRegistry()
	const wantStates = `
# HELP caddy_tptoken_authorizers Authorizer records by state (active, needs_recovery, unauthorized), as found by the last sweep of storage.
# TYPE caddy_tptoken_authorizers gauge
caddy_tptoken_authorizers{component_appid="tt00e2ecomponent",state="active"} 1
caddy_tptoken_authorizers{component_appid="tt00e2ecomponent",state="needs_recovery"} 0
caddy_tptoken_authorizers{component_appid="tt00e2ecomponent",state="unauthorized"} 0
`
	for deadline := time.Now().Add(10 * time.Second); ; {
		err := testutil.GatherAndCompare(reg, strings.NewReader(wantStates), "caddy_tptoken_authorizers")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s of 1s sweeps: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, name := range []string{"caddy_tptoken_ticket_age_seconds", "caddy_tptoken_component_token_expiry_seconds",
		"caddy_tptoken_earliest_refresh_expiry_seconds", "caddy_tptoken_last_sweep_timestamp_seconds",
		"caddy_tptoken_platform_call_duration_seconds", "caddy_tptoken_authorizer_token_lookups_total"} {
		if n, err := testutil.GatherAndCount(reg, name); err != nil || n == 0 {
			t.Errorf("%s: %d series (%v)", name, n, err)
		}
	}
	ours := []string{"caddy_tptoken_token_lookups_total", "caddy_tptoken_platform_calls_total", "caddy_tptoken_replays_total",
		"caddy_tptoken_recoveries_total", "caddy_tptoken_authorizers", "caddy_tptoken_ticket_age_seconds"}
	if problems, err := testutil.GatherAndLint(reg, ours...); err != nil || len(problems) > 0 {
		t.Fatalf("metric lint: %v %+v", err, problems)
	}
	scrape := x.adminDo("GET", "/metrics", "") // also checks: no secret in the exposition
	for _, want := range []string{`caddy_tptoken_token_lookups_total{component_appid="tt00e2ecomponent",result="hit",token="authorizer"}`,
		`caddy_tptoken_authorizer_token_lookups_total{appid="tt01app"`, "caddy_tptoken_ticket_age_seconds"} {
		if !strings.Contains(scrape.Body, want) {
			t.Errorf("admin /metrics lacks %s", want)
		}
	}

	// Reload without metrics_per_appid: counters go on, per-appid series go away.
	x.global = "sweep_interval 1s"
	x.start()
	if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 {
		t.Fatalf("call after reload: %+v", a)
	}
	if got := delta("hit"); got != 5 {
		t.Errorf("hits after reload: +%v, want +5 (counters survive the reload)", got)
	}
	reg = activeRegistry()
	assertNoAppIDLabel(t, reg)
	scrape = x.adminDo("GET", "/metrics", "")
	if strings.Contains(scrape.Body, "{appid=") || strings.Contains(scrape.Body, ",appid=") || !strings.Contains(scrape.Body, "caddy_tptoken_token_lookups_total") {
		t.Fatalf("admin /metrics after reload:\n%s", scrape.Body)
	}
	x.assertNoSecretIn("debug log", x.debugLog())
}

// activeRegistry is the metrics registry of the running config.
func activeRegistry() *prometheus.Registry {
	ctx := caddy.ActiveContext()
	return ctx.GetMetricsRegistry()
}

// Rebuild results and runs are counted by trigger and result, and a run in
// which nothing failed sets the last-success time.
func TestObserverCountsRebuildResultsAndRuns(t *testing.T) {
	set, reg := newTestMetrics(t, false)
	m := set.component("ttcomp")
	m.RebuildResult(tokensource.RebuildByOperator, tokensource.RebuildRebuilt)
	m.RebuildResult(tokensource.RebuildByOperator, tokensource.RebuildRebuilt)
	m.RebuildResult(tokensource.RebuildOnEmpty, tokensource.RebuildFailed)
	m.RebuildDone(tokensource.RebuildOnEmpty, "failed")
	if n := testutil.CollectAndCount(set.rebuildSuccess); n != 0 {
		t.Fatal("a failed run set the last-success time")
	}
	m.RebuildDone(tokensource.RebuildByOperator, "ok")
	const want = `
# HELP caddy_tptoken_rebuild_authorizers_total Authorizers a rebuild reached a result for, by trigger and result (rebuilt, unchanged, refreshed, recovered, not_authorized, skipped_unreadable, skipped_other_family, busy, failed, not_listed).
# TYPE caddy_tptoken_rebuild_authorizers_total counter
caddy_tptoken_rebuild_authorizers_total{component_appid="ttcomp",result="failed",trigger="auto"} 1
caddy_tptoken_rebuild_authorizers_total{component_appid="ttcomp",result="rebuilt",trigger="operator"} 2
# HELP caddy_tptoken_rebuild_runs_total Rebuilds from the platform's authorized-app list, by trigger (operator: caddy tptoken rebuild or the admin API; auto: rebuild_on_empty) and result (ok: nothing failed; failed: some authorizer failed, was busy or unreadable, or the list could not be read; interrupted).
# TYPE caddy_tptoken_rebuild_runs_total counter
caddy_tptoken_rebuild_runs_total{component_appid="ttcomp",result="failed",trigger="auto"} 1
caddy_tptoken_rebuild_runs_total{component_appid="ttcomp",result="ok",trigger="operator"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "caddy_tptoken_rebuild_authorizers_total", "caddy_tptoken_rebuild_runs_total"); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(set.rebuildSuccess.WithLabelValues("ttcomp")); time.Since(time.Unix(int64(v), 0)) > time.Minute {
		t.Fatalf("last success %v", v)
	}
}
