package tptoken

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// provisionJSON provisions a JSON config, as `caddy run --config x.json` would
// before starting it: the tptoken app with the given components (each a JSON
// object of fields over a valid base) and app fields, and, when handler is
// not "", a route with that handler. It returns Caddy's error.
func provisionJSON(t *testing.T, appFields string, comps []string, handler string) error {
	t.Helper()
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	if comps == nil {
		comps = []string{"{}"}
	}
	var list []map[string]any
	for _, fields := range comps {
		c := map[string]any{"component_appid": "tt_rule", "component_appsecret": "s", "endpoint": "http://127.0.0.1:9"}
		if err := decodeNumbers(fields, &c); err != nil {
			t.Fatalf("component fields %s: %v", fields, err)
		}
		list = append(list, c)
	}
	app := map[string]any{}
	if appFields != "" {
		if err := decodeNumbers(appFields, &app); err != nil {
			t.Fatalf("app fields %s: %v", appFields, err)
		}
	}
	app["components"] = list
	apps := map[string]any{"tptoken": app}
	if handler != "" {
		apps["http"] = map[string]any{"servers": map[string]any{"srv0": map[string]any{
			"listen": []string{"127.0.0.1:0"}, "routes": []any{map[string]any{"handle": []json.RawMessage{json.RawMessage(handler)}}}}}}
	}
	raw, err := json.Marshal(map[string]any{
		"admin":   map[string]any{"disabled": true},
		"storage": map[string]any{"module": "file_system", "root": t.TempDir()},
		"apps":    apps,
	})
	if err != nil {
		t.Fatal(err)
	}
	var cfg caddy.Config
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	return caddy.Validate(&cfg)
}

// decodeNumbers decodes JSON keeping numbers as written (no float64 rounding).
func decodeNumbers(s string, v any) error {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	return dec.Decode(v)
}

var caddyfileLine = regexp.MustCompile(`, at Testfile:(\d+)$`)

// Each rule of validate.go gives one message whichever way the config is
// written: the Caddyfile parser reports it with the line, and Provision (a
// JSON config) at the end of Caddy's chain of modules. The message starts
// with the option and says what to write.
func TestEveryRuleGivesTheSameMessageInTheCaddyfileAndInJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("provisions Caddy configs")
	}
	const head = "tptoken {\ncomponent_appid tt_rule\ncomponent_appsecret s\n" // lines 1-3
	type rule struct {
		name   string
		option string // the message starts with it
		// The Caddyfile: a tptoken global block (after first, a block before it,
		// when not ""), a tptoken handler (handler) or a tptoken_events directive.
		first, caddyfile string
		line             int
		// JSON: the app's fields, each component's fields, the route's handler.
		app     string
		comps   []string
		handler string
	}
	rules := []rule{
		{name: "appid: component_appid", option: "component_appid", caddyfile: "tptoken {\ncomponent_appid tt/01\ncomponent_appsecret s\n}", line: 2,
			comps: []string{`{"component_appid": "tt/01"}`}},
		{name: "appid: a handler's component", option: "component", caddyfile: "tptoken {\ncomponent tt/comp\n}", line: 2,
			handler: `{"handler": "tptoken", "component": "tt/comp"}`},
		{name: "appid: tptoken_events component", option: "tptoken_events component", caddyfile: "tptoken_events tt/a", line: 1,
			handler: `{"handler": "tptoken_events", "component": "tt/a"}`},
		{name: "appid: allow", option: "allow", caddyfile: "tptoken {\nallow tt_a tt/b\n}", line: 2,
			handler: `{"handler": "tptoken", "allow": ["tt_a", "tt/b"]}`},
		{name: "component_appid is required", option: "component_appid", caddyfile: "tptoken {\ncomponent_appsecret s\n}", line: 3,
			comps: []string{`{"component_appid": ""}`}},
		{name: "component_appsecret is required", option: "component_appsecret", caddyfile: "tptoken {\ncomponent_appid tt_rule\n}", line: 3,
			comps: []string{`{"component_appsecret": ""}`}},
		{name: "a component is configured once", option: "component_appid", first: head + "}", caddyfile: head + "}", line: 2,
			comps: []string{`{}`, `{}`}},
		{name: "api", option: "api", caddyfile: head + "api v3\n}", line: 4, comps: []string{`{"api": "v3"}`}},
		{name: "endpoint", option: "endpoint", caddyfile: head + "endpoint open.douyin.com\n}", line: 4,
			comps: []string{`{"endpoint": "open.douyin.com"}`}},
		{name: "encoding_aes_key", option: "encoding_aes_key", caddyfile: head + "message_token mt\nencoding_aes_key short\n}", line: 5,
			comps: []string{`{"message_token": "mt", "encoding_aes_key": "short"}`}},
		{name: "message_token and encoding_aes_key go together", option: "message_token", caddyfile: head + "message_token mt\n}", line: 5,
			comps: []string{`{"message_token": "mt"}`}},
		{name: "encryption_key", option: "encryption_key", caddyfile: head + "encryption_key tooshort\n}", line: 4,
			comps: []string{`{"encryption_key": "tooshort"}`}},
		{name: "previous_encryption_keys", option: "previous_encryption_keys[1]",
			caddyfile: head + "encryption_key " + encKeyHex + "\nprevious_encryption_keys " + encKeyB64 + " tooshort\n}", line: 5,
			comps: []string{`{"encryption_key": "` + encKeyHex + `", "previous_encryption_keys": ["` + encKeyB64 + `", "tooshort"]}`}},
		{name: "previous_encryption_keys need encryption_key", option: "previous_encryption_keys",
			caddyfile: head + "previous_encryption_keys " + encKeyB64 + "\n}", line: 5,
			comps: []string{`{"previous_encryption_keys": ["` + encKeyB64 + `"]}`}},
		{name: "duration: redirect_exchanges window", option: "redirect_exchanges window", caddyfile: head + "redirect_exchanges 10 -1m\n}", line: 4,
			comps: []string{`{"redirect_exchanges": 10, "redirect_window": "-1m"}`}},
		{name: "renew_rate", option: "renew_rate", caddyfile: head + "renew_rate -1\n}", line: 4, comps: []string{`{"renew_rate": -1}`}},
		{name: "redirect_exchanges", option: "redirect_exchanges", caddyfile: head + "redirect_exchanges -2\n}", line: 4,
			comps: []string{`{"redirect_exchanges": -2}`}},
		{name: "max_replay_memory", option: "max_replay_memory", caddyfile: head + "max_replay_memory 5EiB\n}", line: 4,
			app: `{"max_replay_memory": 5764607523034234880}`},
		{name: "max_replay_body", option: "max_replay_body", caddyfile: "tptoken {\nmax_replay_body -2\n}", line: 2,
			handler: `{"handler": "tptoken", "max_replay_body": -2}`},
		{name: "token", option: "token", caddyfile: "tptoken {\ntoken refresh\n}", line: 2,
			handler: `{"handler": "tptoken", "token": "refresh"}`},
		{name: "error_response", option: "error_response", caddyfile: "tptoken {\nerror_response json\n}", line: 2,
			handler: `{"handler": "tptoken", "error_response": "json"}`},
		{name: "appid source", option: "appid", caddyfile: "tptoken {\nappid query\n}", line: 2,
			handler: `{"handler": "tptoken", "appid": {"from": "query"}}`},
		{name: "allow with token component", option: "allow", caddyfile: "tptoken {\ntoken component\nallow tt_a\n}", line: 4,
			handler: `{"handler": "tptoken", "token": "component", "allow": ["tt_a"]}`},
	}
	for _, d := range []string{"refresh_ahead", "refresh_token_margin", "timeout", "lock_timeout", "sweep_interval", "push_window"} {
		rules = append(rules, rule{name: "duration: " + d, option: d, caddyfile: head + d + " -1m\n}", line: 4,
			comps: []string{`{"` + d + `": "-1m"}`}})
	}
	for _, n := range []string{"max_concurrent_calls", "redirect_calls"} {
		rules = append(rules, rule{name: "positive integer: " + n, option: n, caddyfile: head + n + " -1\n}", line: 4,
			comps: []string{`{"` + n + `": -1}`}})
	}
	for _, r := range rules {
		t.Run(r.name, func(t *testing.T) {
			var err error
			switch {
			case strings.HasPrefix(r.caddyfile, "tptoken_events"):
				_, err = parseEventsBlock(r.caddyfile)
			case r.handler != "":
				_, err = parseHandlerBlock(r.caddyfile)
			default:
				var first any
				if r.first != "" {
					if _, first, err = parseGlobal(t, r.first, nil); err != nil {
						t.Fatal(err)
					}
				}
				_, _, err = parseGlobal(t, r.caddyfile, first)
			}
			if err == nil {
				t.Fatalf("the Caddyfile was accepted:\n%s", r.caddyfile)
			}
			m := caddyfileLine.FindStringSubmatch(err.Error())
			if m == nil || m[1] != fmt.Sprint(r.line) {
				t.Fatalf("Caddyfile error %q: want it at Testfile:%d", err, r.line)
			}
			msg := strings.TrimSuffix(err.Error(), m[0])
			if !strings.HasPrefix(msg, r.option) {
				t.Errorf("message %q does not start with the option %q", msg, r.option)
			}
			jerr := provisionJSON(t, r.app, r.comps, r.handler)
			if jerr == nil {
				t.Fatalf("the JSON config was accepted")
			}
			if !strings.HasSuffix(jerr.Error(), ": "+msg) {
				t.Errorf("the two paths differ:\nCaddyfile: %s\nJSON:      %s", msg, jerr)
			}
		})
	}
}

// Issue 16, point 6: a provisioning error is logged by tptoken as a short
// first line before Caddy's long chained error.
func TestAProvisioningErrorHasAShortFirstLine(t *testing.T) {
	if testing.Short() {
		t.Skip("loads Caddy configs")
	}
	t.Cleanup(func() { _ = stopCaddy() })
	t.Setenv("TPT_SECRET", "env-appsecret-0042")
	blocks := "\ttptoken {\n\t\tcomponent_appid tt00a\n\t\tcomponent_appsecret {env.TPT_SECRET}\n\t}\n\ttptoken {\n\t\tcomponent_appid tt00b\n\t\tcomponent_appsecret {env.TPT_SECRET}\n\t}"
	site := fmt.Sprintf("http://127.0.0.1:%d {\n\troute {\n\t\ttptoken\n\t\trespond ok\n\t}\n}", freePort(t))
	log, err := loadWithLog(t, blocks, site)
	if err == nil || !strings.Contains(err.Error(), "loading module 'tptoken'") {
		t.Fatalf("a handler naming no component among two loaded: %v", err)
	}
	var first string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, `"level":"error"`) {
			first = l
			break
		}
	}
	const want = `"msg":"configuration error: several components are configured (tt00a, tt00b): name one with ` + "`component <appid>`" + `"`
	if !strings.Contains(first, want) || len(first) >= len(err.Error())+100 {
		t.Fatalf("first error line %q, want one holding %s; Caddy's error: %v", first, want, err)
	}
}
