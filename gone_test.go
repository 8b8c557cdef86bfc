package tptoken

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// Learning from a downstream answer that the authorization is gone
// (transport.go, tokensource.Engine.ReportGone).

// goneMetric reads caddy_tptoken_downstream_gone_total{result} of the e2e component.
func goneMetric(result string) float64 {
	return testutil.ToFloat64(defaultMetrics().goneReports.WithLabelValues(e2eComponent, result))
}

// The merchant revoked the authorization and the UNAUTHORIZED push never
// arrived; the platform answers the authorizer's calls "not authorized". After
// the first such answer (passed to the client as it is), one refresh verifies
// it, and from then on requests get tptoken's 403 without any platform call
// for that appid; the other authorizers are untouched.
func TestDownstreamAuthorizationGoneVerifiesOnceThenAnswers403(t *testing.T) {
	for _, tc := range []struct {
		family   tokensource.Family
		code     int
		noReplay bool // max_replay_body off: the answer is inspected all the same
	}{
		{tokensource.V1, 40022, false},
		{tokensource.V1, 40004, false},
		{tokensource.V1, 40022, true},
		{tokensource.V2, 40022, false},
		{tokensource.V2, 28001014, false},
	} {
		name := fmt.Sprintf("%s_%d", tc.family, tc.code)
		var opts []e2eOpt
		if tc.noReplay {
			name += "_replay_off"
			opts = append(opts, withHandler("tptoken {\n\t\tmax_replay_body off\n\t}"))
		}
		t.Run(name, func(t *testing.T) {
			x := newE2E(t, tc.family, emulator.Lifetimes{}, opts...)
			x.emu.SetUnauthorizedDownstream(tc.code)
			x.authorize("tt01app", "tt02app", "tt03app")
			for _, id := range []string{"tt01app", "tt02app", "tt03app"} {
				if a := x.call("GET", x.apiPath(), appidHeader(id), ""); a.Status != 200 || a.Errno != 0 || a.Data.AppID != id {
					t.Fatalf("%s before: %+v", id, a)
				}
			}
			if err := x.emu.Unauthorize("tt01app", false); err != nil { // no push
				t.Fatal(err)
			}
			before := x.emu.Stats()
			confirmed := goneMetric(tokensource.GoneConfirmed)

			// The first answer is the platform's, unchanged: no replay.
			a := x.call("GET", x.apiPath(), appidHeader("tt01app"), "")
			if a.Status != 200 || a.Errno != tc.code || a.TPToken.Error != "" {
				t.Fatalf("first call after the silent revocation: %+v, want the platform's %d", a, tc.code)
			}
			// The next one triggers the verifying refresh; it and every later
			// one get tptoken's 403.
			for i := range 20 {
				a := x.call("GET", x.apiPath(), appidHeader("tt01app"), "")
				if a.Status != 403 || a.Errno != 40022 || a.TPToken.Error != "unauthorized" {
					t.Fatalf("call %d after the first answer: %+v, want tptoken's 403 unauthorized", i+2, a)
				}
			}
			after := x.emu.Stats()
			calls := func(op string) int64 { return after.Calls[op] - before.Calls[op] }
			app := after.App("tt01app")
			downstream := app.DownstreamOK + app.DownstreamInvalid + app.DownstreamGone -
				(before.App("tt01app").DownstreamOK + before.App("tt01app").DownstreamInvalid + before.App("tt01app").DownstreamGone)
			t.Logf("after the silent revocation, 21 requests: %d downstream, %d refresh, %d retrieve, %d exchange calls",
				downstream, calls(emulator.OpRefresh), calls(emulator.OpRetrieve), calls(emulator.OpExchange))
			if downstream != 1 || calls(emulator.OpDownstream) != 1 {
				t.Fatalf("%d downstream calls for the revoked authorizer (%d in all), want 1", downstream, calls(emulator.OpDownstream))
			}
			if calls(emulator.OpRefresh) != 1 || calls(emulator.OpRetrieve) != 0 || calls(emulator.OpExchange) != 0 {
				t.Fatalf("platform calls after the first answer: refresh %d, retrieve %d, exchange %d; want exactly one refresh",
					calls(emulator.OpRefresh), calls(emulator.OpRetrieve), calls(emulator.OpExchange))
			}
			for _, id := range []string{"tt02app", "tt03app"} {
				if a := x.call("GET", x.apiPath(), appidHeader(id), ""); a.Status != 200 || a.Errno != 0 || a.Data.AppID != id {
					t.Fatalf("another authorizer after the revocation: %+v", a)
				}
			}
			if n := goneMetric(tokensource.GoneConfirmed) - confirmed; n != 1 {
				t.Errorf("caddy_tptoken_downstream_gone_total{result=confirmed} rose by %v, want 1", n)
			}
			log := x.debugLog()
			for _, want := range []string{"a downstream answer said the authorization is gone", "authorization gone; requests for this authorizer now fail"} {
				if !strings.Contains(log, want) {
					t.Errorf("the log lacks %q", want)
				}
			}
			x.assertNoSecretIn("debug log", log)
		})
	}
}

// An answer saying the authorization is gone when it is not (a client can
// steer an upstream's answer through the path and query it chooses): one
// refresh finds it alive and rotates the pair, nothing is lost; a flood of
// such answers is bounded as rejections are: one refresh, then the breaker.
func TestSteeredAuthorizationGoneAnswersCostOneRefresh(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			x := newE2E(t, fam, emulator.Lifetimes{})
			x.authorize("tt01app", "tt02app")
			gone := `{"errno":40022,"message":"steered"}`
			if fam == tokensource.V2 {
				gone = `{"err_no":40022,"err_msg":"steered","log_id":"1"}`
			}
			steer := hostileUpstreamPrefix + "steer?body=" + strings.ReplaceAll(gone, `"`, "%22")
			before := x.emu.Stats()
			alive, tripped := goneMetric(tokensource.GoneAlive), goneMetric(tokensource.RejectBreakerTripped)

			// One answer: verified by one refresh, which succeeds.
			if a := x.call("GET", steer, appidHeader("tt01app"), ""); a.Status != 200 || a.Errno != 40022 {
				t.Fatalf("steered answer: %+v, want it passed through", a)
			}
			if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 || a.Errno != 0 || a.Data.AppID != "tt01app" {
				t.Fatalf("after the verification: %+v", a)
			}
			if s := x.emu.Stats().App("tt01app"); s.Refreshes-before.App("tt01app").Refreshes != 1 || s.Refresh40021 != 0 ||
				s.Retrieves != 0 || s.Exchanges != before.App("tt01app").Exchanges {
				t.Fatalf("one false answer: %+v, want exactly one refresh", s)
			}

			// 300 more, with normal requests alongside: the breaker.
			normal, failed := x.flood(300, hostileUpstreamPrefix+"steer", "tt01app", gone)
			s := x.emu.Stats().App("tt01app")
			refreshes := s.Refreshes - before.App("tt01app").Refreshes
			t.Logf("301 steered authorization-gone answers: %d refreshes, %d retrieves; %d normal requests, %d failed",
				refreshes, s.Retrieves, normal, len(failed))
			if len(failed) > 0 {
				t.Fatalf("%d requests failed, first: %s", len(failed), failed[0])
			}
			if refreshes > 2 || s.Retrieves != 0 || s.Refresh40021 != 0 {
				t.Fatalf("301 steered answers: %d refreshes, %d retrieves, %d 40021; want at most 2 refreshes", refreshes, s.Retrieves, s.Refresh40021)
			}
			if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 || a.Data.AppID != "tt01app" {
				t.Fatalf("after the flood: %+v", a)
			}
			if x.emu.Stats().App("tt02app").Refreshes != 0 {
				t.Fatal("another authorizer was refreshed")
			}
			if goneMetric(tokensource.GoneAlive)-alive != 1 || goneMetric(tokensource.RejectBreakerTripped)-tripped != 1 {
				t.Errorf("caddy_tptoken_downstream_gone_total: alive +%v, breaker_tripped +%v; want +1 each",
					goneMetric(tokensource.GoneAlive)-alive, goneMetric(tokensource.RejectBreakerTripped)-tripped)
			}
			log := x.debugLog()
			if !strings.Contains(log, "authorization alive after a downstream answer said it was gone") {
				t.Error("the verification's outcome was not logged")
			}
			x.assertNoSecretIn("debug log", log)
		})
	}
}
