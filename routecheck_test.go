package tptoken

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tptoken/caddy-tptoken/emulator"
)

// loadCaddyfile adapts and loads a Caddyfile whose global block configures a
// tptoken app (no platform behind it) and turns admin off; site is the rest.
func loadCaddyfile(t *testing.T, site string) error {
	t.Helper()
	cfg := fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
	storage file_system %s
	log {
		level ERROR
	}
	tptoken {
		component_appid tt00routecheck
		component_appsecret {env.TPT_SECRET}
		endpoint http://127.0.0.1:9
		encryption_key {env.TPT_KEY}
	}
}
%s`, t.TempDir(), site)
	t.Setenv("TPT_SECRET", "route-check-secret")
	t.Setenv("TPT_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting:\n%s\n%v", cfg, err)
	}
	return caddy.Load(js, true)
}

// Issue 16, point 1: a reverse_proxy without `transport tptoken` after a
// tptoken handler is refused when the config loads (caddy run, reload, POST
// /load), naming the server, the site, both handlers and what to write.
// Layouts where other requests legitimately reach a plain reverse_proxy load.
func TestConfigLoadRefusesAReverseProxyWithoutTheTransportAfterTptoken(t *testing.T) {
	if testing.Short() {
		t.Skip("loads Caddy configs")
	}
	t.Cleanup(func() { _ = stopCaddy() })
	port := func() string { return fmt.Sprintf("http://127.0.0.1:%d", freePort(t)) }
	const platform = "https://open.microapp.bytedance.com"
	refused := []struct{ name, site, mention string }{
		{"same site, no transport", port() + " {\n\ttptoken\n\treverse_proxy " + platform + "\n}", "routes[0].handle[0].routes[0].handle[1]"},
		{"route block", port() + " {\n\troute /tt/* {\n\t\ttptoken {\n\t\t\tappid path\n\t\t}\n\t\treverse_proxy " + platform + "\n\t}\n}", "reverse_proxy at"},
		{"same named matcher, separate routes", port() + " {\n\t@api path /api/*\n\ttptoken @api\n\treverse_proxy @api " + platform + "\n\trespond 404\n}", "tptoken handler at"},
		{"armed in a route block, proxied after it", port() + " {\n\troute {\n\t\ttptoken\n\t}\n\treverse_proxy " + platform + "\n}", "transport tptoken"},
		{"matched tptoken, unconditional proxy", port() + " {\n\ttptoken /api/*\n\treverse_proxy " + platform + "\n}", "transport tptoken"},
	}
	for _, c := range refused {
		err := loadCaddyfile(t, c.site)
		if err == nil {
			t.Errorf("%s: loaded", c.name)
			continue
		}
		for _, m := range []string{"lack `transport tptoken`", "server \"srv0\"", "site 127.0.0.1", "reverse_proxy <upstream> { transport tptoken }", c.mention} {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("%s: error does not mention %q: %v", c.name, m, err)
			}
		}
	}
	loaded := []struct{ name, site string }{
		{"the transport", port() + " {\n\ttptoken\n\treverse_proxy " + platform + " {\n\t\ttransport tptoken\n\t}\n}"},
		{"other paths go to a plain proxy", port() + " {\n\ttptoken /api/*\n\treverse_proxy /api/* " + platform + " {\n\t\ttransport tptoken\n\t}\n\treverse_proxy /other http://127.0.0.1:9\n}"},
		{"handle blocks are exclusive", port() + " {\n\thandle /api/* {\n\t\ttptoken\n\t\treverse_proxy " + platform + " {\n\t\t\ttransport tptoken\n\t\t}\n\t}\n\thandle {\n\t\treverse_proxy http://127.0.0.1:9\n\t}\n}"},
		{"another site", port() + " {\n\ttptoken\n\treverse_proxy " + platform + " {\n\t\ttransport tptoken\n\t}\n}\n" + port() + " {\n\treverse_proxy http://127.0.0.1:9\n}"},
		{"tptoken answered by respond", port() + " {\n\troute {\n\t\ttptoken\n\t\trespond ok\n\t}\n\treverse_proxy http://127.0.0.1:9\n}"},
	}
	for _, c := range loaded {
		if err := loadCaddyfile(t, c.site); err != nil {
			t.Errorf("%s: refused: %v", c.name, err)
		}
	}
}

// What the load-time check cannot prove is caught per request: the request
// is refused before a byte leaves (the guard header), answered 502
// no_transport in the family's envelope, counted and logged.
func TestARequestReachingAPlainReverseProxyIsRefusedNotSentWithoutItsToken(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			// Requests with X-Plain go to a plain proxy, the others to the one
			// with the transport: the load-time check cannot tell which requests
			// carry X-Plain, so it lets the config load.
			x := newE2E(t, fam, emulator.Lifetimes{}, withHandler("tptoken\n\t@plain header X-Plain 1\n\treverse_proxy @plain {{emu}}"))
			x.authorize("tt01app")
			metrics := func() float64 {
				return testutil.ToFloat64(defaultMetrics().notInjected.WithLabelValues(e2eComponent))
			}
			before := metrics()
			r := x.call("GET", x.apiPath(), appidHeader("tt01app"), "")
			if r.Status != 200 || r.Errno != 0 {
				t.Fatalf("with the transport: %+v", r)
			}
			seen := x.tap.lastRequest()
			plain := appidHeader("tt01app")
			plain.Set("X-Plain", "1")
			r = x.call("GET", x.apiPath(), plain, "")
			if r.Status != http.StatusBadGateway || r.TPToken.Error != "no_transport" || !strings.Contains(r.Message, "transport tptoken") {
				t.Fatalf("through a plain reverse_proxy: %+v %s", r, r.Raw)
			}
			if x.tap.lastRequest() != seen {
				t.Fatal("the request reached the upstream without its token")
			}
			if got := metrics() - before; got != 1 {
				t.Fatalf("caddy_tptoken_requests_not_injected_total grew by %v, want 1", got)
			}
			log := x.debugLog()
			if !strings.Contains(log, "the token was not injected") || !strings.Contains(log, `"path":"`+x.apiPath()) {
				t.Fatal("the refusal was not logged with its path")
			}
			x.assertNoSecretIn("debug log", log)
		})
	}
}
