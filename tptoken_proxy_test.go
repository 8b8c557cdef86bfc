package tptoken

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const proxyGlobal = `{
	tptoken {
		component_appid tt_component_1
		component_appsecret {env.TP_COMPONENT_APPSECRET}
		%s
	}
}
`

// proxyRoute adapts a Caddyfile and returns the handlers of the route
// tptoken_proxy expanded to: the tptoken handler and the reverse_proxy.
func proxyRoute(t *testing.T, caddyfile string) (handler, proxy map[string]any) {
	t.Helper()
	t.Setenv("TP_COMPONENT_APPSECRET", "s")
	out, err := adapt(t, []byte(caddyfile))
	if err != nil {
		t.Fatal(err)
	}
	var find func(v any)
	find = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if hs, ok := v["handle"].([]any); ok && len(hs) == 2 {
				h, _ := hs[0].(map[string]any)
				p, _ := hs[1].(map[string]any)
				if h["handler"] == "tptoken" && p["handler"] == "reverse_proxy" {
					handler, proxy = h, p
					return
				}
			}
			for _, c := range v {
				find(c)
			}
		case []any:
			for _, c := range v {
				find(c)
			}
		}
	}
	var cfg any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	find(cfg)
	if handler == nil {
		t.Fatalf("no route with the tptoken handler and reverse_proxy in:\n%s", out)
	}
	return handler, proxy
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestProxyOptionsLandWhereTheyBelong(t *testing.T) {
	handler, proxy := proxyRoute(t, strings.Replace(proxyGlobal, "%s", "api v2", 1)+`
:8080 {
	tptoken_proxy /api/* {
		appid header X-Authorizer-Appid
		allow tt01app
		dial_timeout 3s
		tls_server_name open.douyin.com
		header_up X-Sidecar tptoken
		lb_retries 2
	}
}
`)
	for field, want := range map[string]string{
		"appid": `{"from":"header","name":"X-Authorizer-Appid"}`, "allow": `["tt01app"]`,
		"token": `"auto"`, "error_response": `"platform"`, // the shortcut's defaults
	} {
		if got := jsonOf(handler[field]); got != want {
			t.Errorf("handler %s = %s, want %s", field, got, want)
		}
	}
	transport, _ := proxy["transport"].(map[string]any)
	if transport["protocol"] != "tptoken" || transport["dial_timeout"] != float64(3e9) || jsonOf(transport["tls"]) != `{"server_name":"open.douyin.com"}` {
		t.Errorf("transport = %s", jsonOf(transport))
	}
	if jsonOf(proxy["upstreams"]) != `[{"dial":"open.douyin.com:443"}]` || jsonOf(proxy["load_balancing"]) != `{"retries":2}` ||
		!strings.Contains(jsonOf(proxy["headers"]), `"X-Sidecar":["tptoken"]`) {
		t.Errorf("reverse_proxy = %s", jsonOf(proxy))
	}
}

// Without an upstream, requests go to the component's endpoint: the family's
// platform host by default, or the endpoint the TP is configured with.
func TestProxyDefaultUpstreamIsTheComponentsEndpoint(t *testing.T) {
	tests := []struct {
		name, global, site, dial string
		tls                      bool
	}{
		{"v1", "api v1", "tptoken_proxy", "open.microapp.bytedance.com:443", true},
		{"v2", "api v2", "tptoken_proxy", "open.douyin.com:443", true},
		{"an endpoint of its own", "api v2\n\t\tendpoint http://127.0.0.1:9102", "tptoken_proxy", "127.0.0.1:9102", false},
		{"named", "api v2", "tptoken_proxy https://developer.toutiao.com", "developer.toutiao.com:443", true},
		{"named with to", "api v2", "tptoken_proxy {\n\t\tto https://webcast.bytedance.com\n\t}", "webcast.bytedance.com:443", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, proxy := proxyRoute(t, strings.Replace(proxyGlobal, "%s", tt.global, 1)+":8080 {\n\t"+tt.site+"\n}\n")
			transport, _ := proxy["transport"].(map[string]any)
			_, tls := transport["tls"]
			if got := jsonOf(proxy["upstreams"]); got != `[{"dial":"`+tt.dial+`"}]` || tls != tt.tls {
				t.Fatalf("upstreams %s, tls %v; want %s, %v", got, tls, tt.dial, tt.tls)
			}
		})
	}
}

func TestProxyErrorsNameTheOptionAndLine(t *testing.T) {
	one := strings.Replace(proxyGlobal, "%s", "", 1) // lines 1-7
	two := one[:len(one)-2] + "\ttptoken {\n\t\tcomponent_appid tt_component_2\n\t\tcomponent_appsecret {env.TP_COMPONENT_APPSECRET}\n\t}\n}\n"
	tests := []struct {
		name, caddyfile, mention string
		line                     int
	}{
		{"a transport option's value", one + ":8080 {\n\ttptoken_proxy {\n\t\tdial_timeout soon\n\t}\n}\n", "soon", 10},
		{"a handler option's value", one + ":8080 {\n\ttptoken_proxy {\n\t\tdial_timeout 1s\n\t\ttoken refresh\n\t}\n}\n", `token "refresh"`, 11},
		{"an unknown option", one + ":8080 {\n\ttptoken_proxy {\n\t\tallow tt01\n\n\t\tlb_bogus 1\n\t}\n}\n", "lb_bogus", 12},
		{"a transport of its own", one + ":8080 {\n\ttptoken_proxy {\n\t\ttransport http\n\t}\n}\n", "its transport is tptoken's", 10},
		{"a reverse_proxy option's value", one + ":8080 {\n\ttptoken_proxy {\n\t\tlb_retries many\n\t}\n}\n", "many", 10},
		{"no TP to take the upstream from", ":8080 {\n\ttptoken_proxy\n}\n", "no upstream", 2},
		{"several TPs, none named", two + ":8080 {\n\ttptoken_proxy\n}\n", "several TPs", 13},
		{"a TP not configured", one + ":8080 {\n\ttptoken_proxy {\n\t\tcomponent tt_other\n\t}\n}\n", "tt_other is not configured", 9},
		{"an endpoint with a path", strings.Replace(proxyGlobal, "%s", "endpoint https://proxy.example/douyin", 1) +
			":8080 {\n\ttptoken_proxy\n}\n", "has a path", 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("TP_COMPONENT_APPSECRET", "s")
			_, err := adapt(t, []byte(tt.caddyfile))
			wantErr(t, err, tt.mention, "Caddyfile:"+strconv.Itoa(tt.line))
		})
	}
}

// The shortcut hands `transport http`'s options to the tptoken transport by
// name: the list must be Caddy's, or a new option would reach reverse_proxy's
// parser and be refused there.
func TestProxyKnowsEveryHTTPTransportOption(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/caddyserver/caddy/v2").Output()
	if err != nil {
		t.Skipf("locating Caddy's source: %v", err)
	}
	file := filepath.Join(strings.TrimSpace(string(out)), "modules", "caddyhttp", "reverseproxy", "caddyfile.go")
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var caddys []string
	for _, decl := range f.Decls {
		fn, ok := decl.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "UnmarshalCaddyfile" || fn.Recv == nil || !strings.Contains(jsonOf(fn.Recv.List[0].Type), "HTTPTransport") {
			continue
		}
		// The options are the cases of the first switch (on d.Val()).
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			sw, ok := n.(*ast.SwitchStmt)
			if !ok || caddys != nil {
				return caddys == nil
			}
			for _, c := range sw.Body.List {
				for _, e := range c.(*ast.CaseClause).List {
					if lit, ok := e.(*ast.BasicLit); ok {
						v, _ := strconv.Unquote(lit.Value)
						caddys = append(caddys, v)
					}
				}
			}
			return false
		})
	}
	if len(caddys) < 20 {
		t.Fatalf("found %d options in %s: the test no longer reads Caddy's source", len(caddys), file)
	}
	var ours []string
	for o := range httpTransportOptions {
		ours = append(ours, o)
	}
	slices.Sort(caddys)
	slices.Sort(ours)
	if !slices.Equal(caddys, ours) {
		t.Fatalf("transport http's options are\n%v\nhttpTransportOptions has\n%v", caddys, ours)
	}
}

// An app token route through the shortcut: the handler's app options pass
// through, the app is fixed (no appid read from the token slot, where a
// client sends its old token), and the default upstream is the host of the
// app's token endpoint for the kind.
func TestProxyAppTokenRoute(t *testing.T) {
	apps := "app tt_app_1 {\n\t\t\tsecret {env.TP_COMPONENT_APPSECRET}\n\t\t\ttokens client_token app_access_token\n\t\t}"
	tests := []struct {
		name, global, block, dial string
		handler                   map[string]string
	}{
		{"client_token", apps, "token client_token", "open.douyin.com:443",
			map[string]string{"token": `"client_token"`, "appid": `null`, "app": `null`}},
		{"app_access_token, placed", apps, "token app_access_token\n\t\tapp tt_app_1\n\t\tinject query access_token", "developer.toutiao.com:443",
			map[string]string{"token": `"app_access_token"`, "app": `"tt_app_1"`, "inject": `{"in":"query","name":"access_token"}`}},
		{"an endpoint of its own", strings.Replace(apps, "tokens client_token app_access_token", "tokens client_token\n\t\t\tendpoint client_token http://127.0.0.1:9102", 1),
			"token client_token", "127.0.0.1:9102", map[string]string{"token": `"client_token"`}},
		{"appid from the request, asked for", apps, "token client_token\n\t\tappid token", "open.douyin.com:443",
			map[string]string{"appid": `{"from":"token"}`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			handler, proxy := proxyRoute(t, strings.Replace(proxyGlobal, "%s", tt.global, 1)+":8080 {\n\ttptoken_proxy {\n\t\t"+tt.block+"\n\t}\n}\n")
			for field, want := range tt.handler {
				if got := jsonOf(handler[field]); got != want {
					t.Errorf("handler %s = %s, want %s", field, got, want)
				}
			}
			if got := jsonOf(proxy["upstreams"]); got != `[{"dial":"`+tt.dial+`"}]` {
				t.Errorf("upstreams %s, want %s", got, tt.dial)
			}
		})
	}
	two := apps + "\n\t\tapp tt_app_2 {\n\t\t\tsecret {env.TP_COMPONENT_APPSECRET}\n\t\t\ttokens client_token\n\t\t}"
	for _, tt := range []struct{ name, global, block, mention string }{
		{"several apps, none named", two, "token client_token", "several apps keep a client_token"},
		{"an app without the kind", strings.Replace(two, "tokens client_token app_access_token", "tokens app_access_token", 1),
			"token client_token\n\t\tapp tt_app_1", "tt_app_1 keeps no client_token"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("TP_COMPONENT_APPSECRET", "s")
			_, err := adapt(t, []byte(strings.Replace(proxyGlobal, "%s", tt.global, 1)+":8080 {\n\ttptoken_proxy {\n\t\t"+tt.block+"\n\t}\n}\n"))
			wantErr(t, err, tt.mention)
		})
	}
}
