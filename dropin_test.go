package tptoken

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// Drop-in routes, through a real Caddy: the appid where the token goes
// (appid token), the token the path takes (token auto), failures as the
// platform answers them (error_response platform), loops, and the
// tptoken_proxy shortcut.

// slotHeader is a request header of the token slot: the family's own
// (v2 access-token; v1 has none, so the SDK's other header, x-token).
func slotHeader(fam tokensource.Family, appid string) http.Header {
	if fam == tokensource.V2 {
		return http.Header{"Access-Token": {appid}}
	}
	return http.Header{"X-Token": {appid}}
}

func TestTokenSlotCarrierReplacesTheAppidWithTheTokenAndLeavesNoCopy(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			x := newE2E(t, fam, emulator.Lifetimes{}, withHandler("tptoken {\n\t\tappid token\n\t}"))
			x.authorize("tt01app", "tt02app")

			// The family's own slot, with copies in every other place a token travels.
			h := http.Header{"Access-Token": {"tt01app"}, "X-Token": {"tt01app"}}
			q := "?hello=world&access_token=tt01app"
			want := map[string]int{"header:access-token": 1}
			if fam == tokensource.V1 {
				q += "&authorizer_access_token=tt01app"
				want = map[string]int{"query:authorizer_access_token": 1}
			}
			a := x.call("GET", x.apiPath()+q, h, "")
			if a.Status != 200 || a.Errno != 0 || a.Data.AppID != "tt01app" {
				t.Fatalf("got %+v", a)
			}
			if fmt.Sprint(a.Data.TokenCarriers) != fmt.Sprint(want) {
				t.Fatalf("the platform received tokens in %v, want only %v", a.Data.TokenCarriers, want)
			}
			wantQuery := "hello=world"
			if fam == tokensource.V1 {
				wantQuery += "&component_appid=" + e2eComponent + "&authorizer_access_token=***"
			}
			if a.Data.Query != wantQuery {
				t.Fatalf("query forwarded: %q", a.Data.Query)
			}
			// What tptoken sends carries the hop mark in Via, before
			// reverse_proxy's own entry (loop.go), and no header of its own.
			sent := x.tap.lastRequest().Header
			if got := sent.Values("Via"); len(got) != 2 || got[0] != hopMark || !strings.HasSuffix(got[1], " Caddy") {
				t.Fatalf("Via = %q on the forwarded request, want [%q, \"1.1 Caddy\"]", got, hopMark)
			}

			// Different values: refused, without repeating them.
			a = x.call("GET", x.apiPath(), http.Header{"Access-Token": {"tt01app"}, "X-Token": {"tt02app"}}, "")
			if a.Status != 400 || a.TPToken.Error != "bad_appid" || !strings.Contains(a.Message, "header access-token, header x-token") ||
				strings.Contains(a.Raw, "tt01app") || strings.Contains(a.Raw, "tt02app") {
				t.Fatalf("conflicting slots: %+v", a)
			}
			// None: the message says where to put it.
			a = x.call("GET", x.apiPath(), nil, "")
			if a.Status != 400 || !strings.Contains(a.Message, "where the token goes") {
				t.Fatalf("no slot: %+v", a)
			}
		})
	}
}

// A value in the token slot may be a token: an app not migrated yet sends its
// old one, or a loop sends the one just injected. Nothing tptoken answers or
// logs repeats a value it has not confirmed as an appid: not the message, not
// tptoken.appid, not {http.tptoken.appid}.
func TestTokenSlotNeverEchoesAValueNotConfirmedAsAnAppid(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			x := newE2E(t, fam, emulator.Lifetimes{},
				withSite("header {\n\t\tdefer\n\t\tX-Appid-Seen {http.tptoken.appid}\n\t}"),
				withRoute(`handle /restricted/* {
		tptoken {
			appid token
			allow tt01app
		}
		reverse_proxy {{emu}} {
			transport tptoken
		}
	}
	handle /header/* {
		tptoken {
			appid header access-token
		}
		reverse_proxy {{emu}} {
			transport tptoken
		}
	}
	handle {
		tptoken {
			appid token
		}
		reverse_proxy {{emu}} {
			transport tptoken
		}
	}`))
			x.authorize("tt01app")
			v2Token := "isvact." + strings.Repeat("5e", 32)  // not an appid's shape
			v1Token := strings.Repeat("0123456789abcdef", 4) // 64 hex digits: an appid's shape
			cases := []struct {
				name, path, value, kind string
			}{
				{"a v2 token", x.apiPath(), v2Token, "bad_appid"},
				{"a v1 token, unknown", x.apiPath(), v1Token, "unknown_authorizer"},
				{"a v1 token, not allowed", "/restricted" + x.apiPath(), v1Token, "not_allowed"},
				{"a v2 token in the appid header", "/header" + x.apiPath(), v2Token, "bad_appid"},
			}
			for _, tc := range cases {
				h := http.Header{"Access-Token": {tc.value}}
				a := x.call("GET", tc.path, h, "")
				if a.TPToken.Error != tc.kind || a.TPToken.AppID != "" {
					t.Errorf("%s: got %+v", tc.name, a)
				}
				if strings.Contains(a.Raw, tc.value) || strings.Contains(a.Header.Get("X-Appid-Seen"), tc.value) {
					t.Errorf("%s: the answer repeats the value: %s (X-Appid-Seen %q)", tc.name, a.Raw, a.Header.Get("X-Appid-Seen"))
				}
				if fp := tokensource.Secret(tc.value).Fingerprint(); tc.kind != "bad_appid" && !strings.Contains(a.Message, fp) {
					t.Errorf("%s: the message does not name the value's fingerprint %s: %q", tc.name, fp, a.Message)
				}
			}
			log := x.debugLog()
			for _, v := range []string{v1Token, v2Token} {
				if strings.Contains(log, v) {
					t.Fatalf("the debug log holds a value of the token slot (%d characters)", len(v))
				}
			}
			// A known appid is named, in the answer and the placeholder.
			if err := x.emu.Unauthorize("tt01app", true); err != nil {
				t.Fatal(err)
			}
			a := x.call("GET", x.apiPath(), http.Header{"Access-Token": {"tt01app"}}, "")
			if a.TPToken.Error != "unauthorized" || a.TPToken.AppID != "tt01app" || !strings.Contains(a.Message, "tt01app") ||
				a.Header.Get("X-Appid-Seen") != "tt01app" {
				t.Fatalf("a known appid: %+v (X-Appid-Seen %q)", a, a.Header.Get("X-Appid-Seen"))
			}
		})
	}
}

func TestTokenAutoInjectsTheComponentTokenOnTPLevelPaths(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			x := newE2E(t, fam, emulator.Lifetimes{}, withHandler("tptoken {\n\t\tappid token\n\t\ttoken auto\n\t}"))
			x.authorize("tt01app")
			list := "/api/tpapp/v2/auth/get_auth_app_list/?page=1&size=10"
			if fam == tokensource.V1 {
				list = "/openapi/v1/tp/auth_app_list?page=1&size=10"
			}
			// The SDK needs some token value: the TP's appid, or anything, is dropped.
			a := x.call("GET", list, slotHeader(fam, "whatever-the-app-sends"), "")
			if a.Status != 200 || a.Errno != 0 || !strings.Contains(a.Raw, "tt01app") {
				t.Fatalf("TP-level API: %+v", a)
			}
			a = x.call("GET", x.apiPath(), slotHeader(fam, "tt01app"), "")
			if a.Status != 200 || a.Errno != 0 || a.Data.AppID != "tt01app" || a.Data.Token != "authorizer" {
				t.Fatalf("authorizer API: %+v", a)
			}
		})
	}
}

// A route whose upstream is the sidecar itself: the second pass is refused
// before its carrier is read, so the token the first pass injected reaches no
// answer and no log, and the platform is never called.
func TestARequestLoopIsRefusedWithoutLeakingTheToken(t *testing.T) {
	for _, fam := range e2eFamilies {
		for _, mode := range []string{"envelope", "platform"} {
			t.Run(string(fam)+"/"+mode, func(t *testing.T) {
				x := newE2E(t, fam, emulator.Lifetimes{}, withRoute(`handle /loop/* {
		tptoken {
			appid token
			error_response `+mode+`
		}
		reverse_proxy {{proxy}} {
			transport tptoken
		}
	}
	handle {
		tptoken {
			appid token
			error_response `+mode+`
		}
		reverse_proxy {{emu}} {
			transport tptoken
		}
	}`))
				x.authorize("tt01app")
				loops := func() float64 { return testutil.ToFloat64(defaultMetrics().loops.WithLabelValues(e2eComponent)) }
				before, calls := loops(), x.emu.Stats().Calls["downstream"]
				a := x.call("GET", "/loop"+x.apiPath()+"?authorizer_access_token=tt01app", slotHeader(fam, "tt01app"), "")
				want := http.StatusLoopDetected
				if mode == "platform" {
					want = http.StatusOK
				}
				if a.Status != want || a.Errno != 40000 || a.TPToken.Error != "loop" || !strings.Contains(a.Message, "request loop") {
					t.Fatalf("got %+v", a)
				}
				x.assertNoSecretIn("the answer", a.Raw)
				x.assertNoSecretIn("the debug log", x.debugLog())
				if got := loops() - before; got != 1 {
					t.Fatalf("caddy_tptoken_request_loops_total grew by %v, want 1", got)
				}
				if x.emu.Stats().Calls["downstream"] != calls {
					t.Fatal("the looped request reached the platform")
				}
				// A client's own hop mark is refused the same way, before
				// anything else, wherever it is in its Via.
				h := slotHeader(fam, "tt01app")
				h.Set("Via", "1.0 corporate-proxy, 1.1 TPTOKEN, 1.1 Caddy")
				if a := x.call("GET", x.apiPath(), h, ""); a.TPToken.Error != "loop" || x.emu.Stats().Calls["downstream"] != calls {
					t.Fatalf("with a hop mark: %+v", a)
				}
			})
		}
	}
}

// With error_response platform, a platform that does not answer is reported
// in the family's envelope too: the SDKs discard an empty 502.
func TestUnreachablePlatformIsAnsweredInTheEnvelopeInPlatformMode(t *testing.T) {
	closed := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	x := newE2E(t, tokensource.V2, emulator.Lifetimes{}, withRoute(`handle /platform/* {
		tptoken {
			appid token
			error_response platform
		}
		reverse_proxy `+closed+` {
			transport tptoken
		}
	}
	handle {
		tptoken {
			appid token
		}
		reverse_proxy `+closed+` {
			transport tptoken
		}
	}`))
	x.authorize("tt01app")
	a := x.call("GET", "/platform"+x.apiPath(), slotHeader(tokensource.V2, "tt01app"), "")
	if a.Status != 200 || a.Errno != 40000 || a.TPToken.Error != "platform_unreachable" || !strings.Contains(a.Message, "no answer from the platform") {
		t.Fatalf("platform mode: %+v", a)
	}
	x.assertNoSecretIn("the answer", a.Raw)
	// The status mode keeps reverse_proxy's own answer.
	if status, _, _ := x.rawCall("GET", x.apiPath(), slotHeader(tokensource.V2, "tt01app"), ""); status != http.StatusBadGateway {
		t.Fatalf("envelope mode: status %d, want reverse_proxy's 502", status)
	}
}

// An upstream of a tptoken transport that resolves to a server of this Caddy
// with a tptoken handler is reported at start-up (in the background), by name
// or by address; one on a server without (an emulator served by the same
// Caddy, here the tptoken_events site) or elsewhere is not.
func TestStartupReportsAnUpstreamResolvingToThisCaddy(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withRoute(`handle /name/* {
		tptoken
		reverse_proxy http://localhost:{{proxy_port}} {
			transport tptoken
		}
	}
	handle /address/* {
		tptoken
		reverse_proxy {{proxy}} {
			transport tptoken
		}
	}
	handle /events/* {
		tptoken
		reverse_proxy {{events}} {
			transport tptoken
		}
	}
	handle {
		tptoken
		reverse_proxy {{emu}} {
			transport tptoken
		}
	}`))
	const report = "resolves to this Caddy"
	waitUntil(t, 10*time.Second, "the start-up loop check", func() bool {
		return strings.Contains(x.debugLog(), "request loop check of the upstreams done")
	})
	if n := strings.Count(x.debugLog(), report); n != 2 {
		t.Fatalf("%d reports, want 2", n)
	}
	_, port, _ := strings.Cut(strings.TrimPrefix(x.proxy, "http://"), ":")
	log := x.debugLog()
	for _, upstream := range []string{"localhost:" + port, "127.0.0.1:" + port} {
		if !strings.Contains(log, `"upstream":"`+upstream+`"`) {
			t.Errorf("no report naming %s", upstream)
		}
	}
	if strings.Contains(log, `"upstream":"`+strings.TrimPrefix(x.events, "http://")+`"`) {
		t.Error("an upstream on a server without a tptoken handler was reported")
	}
}

// The shortcut through a real Caddy: both families, the defaults of a drop-in
// route (appid token, token auto, error_response platform), the component's
// endpoint as the upstream, and the load-time route check satisfied.
func TestProxyShortcutServesDropInRoutes(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			x := newE2E(t, fam, emulator.Lifetimes{}, withRoute("tptoken_proxy"))
			x.authorize("tt01app")
			a := x.call("GET", x.apiPath(), slotHeader(fam, "tt01app"), "")
			if a.Status != 200 || a.Errno != 0 || a.Data.AppID != "tt01app" || a.Data.Token != "authorizer" {
				t.Fatalf("authorizer API: %+v", a)
			}
			list := "/api/tpapp/v2/auth/get_auth_app_list/?page=1&size=10"
			if fam == tokensource.V1 {
				list = "/openapi/v1/tp/auth_app_list?page=1&size=10"
			}
			if a := x.call("GET", list, slotHeader(fam, e2eComponent), ""); a.Status != 200 || a.Errno != 0 {
				t.Fatalf("TP-level API: %+v", a)
			}
			a = x.call("GET", x.apiPath(), slotHeader(fam, "tt404"), "")
			if a.Status != 200 || a.Errno != 40022 || a.TPToken.Error != "unknown_authorizer" {
				t.Fatalf("unknown appid: %+v", a)
			}
		})
	}
}

// A tptoken directive left beside a tptoken_proxy would serve each request
// twice: refused when the config loads, or, where the check cannot prove it,
// answered two_handlers (not "request loop") per request.
func TestTwoTptokenHandlersOnOnePathAreAConfigError(t *testing.T) {
	if testing.Short() {
		t.Skip("loads Caddy configs")
	}
	site := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	err := loadCaddyfile(t, site+" {\n\ttptoken\n\ttptoken_proxy http://127.0.0.1:9\n}")
	_ = stopCaddy()
	if err == nil || !strings.Contains(err.Error(), "1 tptoken handler(s) follow another one") || !strings.Contains(err.Error(), "remove one") {
		t.Fatalf("loaded, or the error does not say what to fix: %v", err)
	}

	// After a matcher the check cannot compare, it cannot tell: the config
	// loads, and each such request is refused.
	x := newE2E(t, tokensource.V2, emulator.Lifetimes{}, withRoute(`tptoken {
		appid token
	}
	@two header X-Two 1
	tptoken_proxy @two
	tptoken_proxy`))
	x.authorize("tt01app")
	loops := testutil.ToFloat64(defaultMetrics().loops.WithLabelValues(e2eComponent))
	a := x.call("GET", x.apiPath(), slotHeader(tokensource.V2, "tt01app"), "")
	if a.Status != 200 || a.Errno != 40000 || a.TPToken.Error != "two_handlers" || !strings.Contains(a.Message, "two tptoken handlers") {
		t.Fatalf("got %+v", a)
	}
	if testutil.ToFloat64(defaultMetrics().loops.WithLabelValues(e2eComponent)) != loops {
		t.Fatal("counted as a request loop")
	}
}
