package emulator

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

func TestEmulatorCaddyfileParsesEveryForm(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  Handler
	}{
		{"minimal", `tptoken_emulator {
			component_appid tt0123456789abcdef
			component_appsecret s3cret
		}`, Handler{ComponentAppID: tpAppID, ComponentAppSecret: "s3cret"}},
		{"placeholders stay unresolved", `tptoken_emulator {
			component_appid     {env.TP_APPID}
			component_appsecret {env.TP_SECRET}
			message_token       {file./run/secrets/token}
			encoding_aes_key    {env.TP_AES_KEY}
		}`, Handler{ComponentAppID: "{env.TP_APPID}", ComponentAppSecret: "{env.TP_SECRET}",
			MessageToken: "{file./run/secrets/token}", EncodingAESKey: "{env.TP_AES_KEY}"}},
		{"everything", `tptoken_emulator {
			component_appid     tt0123456789abcdef
			component_appsecret s3cret
			message_token       QDG6eK
			encoding_aes_key    jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C
			push_url            http://127.0.0.1:9443/events
			ticket_interval     30s
			access_token_ttl    10m
			refresh_token_ttl   1d
			component_token_ttl 15m
			code_ttl            5m
			ticket_ttl          1h
			v1_reissue_window   2m
			v2_grace            30s
			seed                -42
			authorize           tta000000000000001 ttb000000000000002
		}`, Handler{
			ComponentAppID: tpAppID, ComponentAppSecret: "s3cret", MessageToken: msgToken, EncodingAESKey: aesKey,
			PushURL: "http://127.0.0.1:9443/events", TicketInterval: caddy.Duration(30 * time.Second),
			AccessTokenTTL: caddy.Duration(10 * time.Minute), RefreshTokenTTL: caddy.Duration(24 * time.Hour),
			ComponentTokenTTL: caddy.Duration(15 * time.Minute), CodeTTL: caddy.Duration(5 * time.Minute),
			TicketTTL: caddy.Duration(time.Hour), V1ReissueWindow: caddy.Duration(2 * time.Minute), V2Grace: caddy.Duration(30 * time.Second),
			Seed: -42, Authorize: []string{appA, appB},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input)); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(h, tt.want) {
				t.Fatalf("got  %+v\nwant %+v", h, tt.want)
			}
		})
	}
}

func TestEmulatorCaddyfileRejectsErrorsNamingThem(t *testing.T) {
	const base = "component_appid tt0123456789abcdef\ncomponent_appsecret s\n"
	tests := []struct {
		name, input, want string
	}{
		{"unknown subdirective", base + "colour blue", "unknown subdirective colour"},
		{"duplicate subdirective", base + "code_ttl 1m\ncode_ttl 2m", "duplicate subdirective code_ttl"},
		{"duplicate secret", base + "component_appsecret t", "duplicate subdirective component_appsecret"},
		{"string without value", base + "push_url", "push_url: expected one value"},
		{"string with two values", base + "message_token a b", "message_token: expected one value"},
		{"duration without value", base + "access_token_ttl", "access_token_ttl: expected one duration"},
		{"duration with two values", base + "v2_grace 1m 2m", "v2_grace: expected one duration"},
		{"bad duration", base + "code_ttl soon", `code_ttl: "soon" is not a positive duration`},
		{"zero duration", base + "ticket_interval 0s", `ticket_interval: "0s" is not a positive duration`},
		{"bad seed", base + "seed x", `seed: "x" is not an integer`},
		{"seed without value", base + "seed", "seed: expected one integer"},
		{"authorize without appid", base + "authorize", "authorize: expected at least one appid"},
		{"authorize bad appid", base + "authorize tt1 ../etc", `authorize: invalid appid "../etc"`},
		{"missing secret", "component_appid tt0123456789abcdef", "component_appid and component_appsecret are required"},
		{"bad component appid", "component_appid a/b\ncomponent_appsecret s", `component_appid: invalid appid "a/b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("tptoken_emulator {\n" + tt.input + "\n}"))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), "line") && !strings.Contains(err.Error(), ":") {
				t.Fatalf("error without a position: %v", err)
			}
		})
	}
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("tptoken_emulator extra {\n" + base + "}")); err == nil {
		t.Fatal("argument on the directive line accepted")
	}
}

func provision(t *testing.T, h *Handler) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
}

func serve(h *Handler, req *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req, nil)
	return w
}

func TestEmulatorCaddyModuleResolvesPlaceholdersAndServes(t *testing.T) {
	t.Setenv("TPTOKEN_EMU_TEST_SECRET", "secret-from-env")
	h := &Handler{ComponentAppID: "tt00000000000000e1", ComponentAppSecret: "{env.TPTOKEN_EMU_TEST_SECRET}", TicketInterval: caddy.Duration(time.Hour)}
	provision(t, h)
	t.Cleanup(func() { h.Cleanup() })
	if h.ComponentAppSecret != "{env.TPTOKEN_EMU_TEST_SECRET}" {
		t.Fatal("Provision rewrote the JSON config field")
	}
	q := url.Values{"component_appid": {"tt00000000000000e1"}, "component_appsecret": {"secret-from-env"}, "component_ticket": {h.emu.Ticket()}}
	w := serve(h, httptest.NewRequest("GET", PathV1ComponentToken+"?"+q.Encode(), nil))
	var out map[string]any
	json.Unmarshal(w.Body.Bytes(), &out)
	if w.Code != 200 || out["component_access_token"] == nil {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if w := serve(h, httptest.NewRequest("GET", "/nope", nil)); w.Code != 404 {
		t.Fatalf("unknown path: %d", w.Code)
	}
}

func TestEmulatorCaddyModuleRejectsEmptySecretsAtProvision(t *testing.T) {
	h := &Handler{ComponentAppID: "tt00000000000000e2", ComponentAppSecret: "{env.TPTOKEN_EMU_TEST_UNSET}"}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err == nil || !strings.Contains(err.Error(), "required") {
		t.Fatalf("err = %v", err)
	}
	h = &Handler{ComponentAppID: "tt00000000000000e2", ComponentAppSecret: "s", MessageToken: "t", EncodingAESKey: "short"}
	if err := h.Provision(ctx); err == nil || strings.Contains(err.Error(), "short") {
		t.Fatalf("bad key: err = %v", err)
	}
}

func TestEmulatorCaddyModuleStateSurvivesReloadAndStopsWithTheLastConfig(t *testing.T) {
	rcv := newReceiver(t, "tt00000000000000e3")
	cfg := func(ttl time.Duration) *Handler {
		return &Handler{ComponentAppID: "tt00000000000000e3", ComponentAppSecret: "s", MessageToken: msgToken, EncodingAESKey: aesKey,
			PushURL: rcv.srv.URL, TicketInterval: caddy.Duration(time.Hour), AccessTokenTTL: caddy.Duration(ttl),
			Authorize: []string{appA}}
	}
	// The first config starts the emulator: a ticket, then AUTHORIZED for appA.
	old := cfg(time.Hour)
	provision(t, old)
	if m := rcv.next(t); m.Kind != push.Ticket {
		t.Fatalf("first push %+v", m)
	}
	if m := rcv.next(t); m.Kind != push.Authorized || m.AppID != appA {
		t.Fatalf("second push %+v", m)
	}
	// A reload: the new config provisions before the old one is cleaned up.
	reloaded := cfg(10 * time.Minute)
	provision(t, reloaded)
	if reloaded.emu != old.emu {
		t.Fatal("the reload created a second emulator")
	}
	if got := reloaded.emu.Lifetimes().AccessTokenTTL; got != 10*time.Minute {
		t.Fatalf("reload did not apply the new lifetime: %v", got)
	}
	if err := old.Cleanup(); err != nil {
		t.Fatal(err)
	}
	v, ok := emulators.References(reloaded.key)
	if !ok || v != 1 {
		t.Fatalf("references after the old config's cleanup: %d %v", v, ok)
	}
	if !reloaded.emu.Authorizers()[appA] {
		t.Fatal("authorizer state lost across the reload")
	}
	var p *pooled
	emulators.Range(func(k, val any) bool {
		if k == reloaded.key {
			p = val.(*pooled)
		}
		return true
	})
	if err := reloaded.Cleanup(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the ticket loop did not end with the last config")
	}
	if _, ok := emulators.References(reloaded.key); ok {
		t.Fatal("pool entry left behind")
	}
}

func TestEmulatorCaddyModuleInfo(t *testing.T) {
	mi := Handler{}.CaddyModule()
	if mi.ID != "http.handlers.tptoken_emulator" {
		t.Fatal(mi.ID)
	}
	if _, ok := mi.New().(*Handler); !ok {
		t.Fatal("New does not return *Handler")
	}
}

func TestEmulatorCaddyfileAdaptsWithoutRouteBlockAndKeepsPlaceholders(t *testing.T) {
	input := `:8080 {
	respond /health "ok"
	tptoken_emulator {
		component_appid {env.TP_COMPONENT_APPID}
		component_appsecret {env.TP_COMPONENT_APPSECRET}
		code_ttl 5m
	}
}
`
	adapter := caddyconfig.GetAdapter("caddyfile")
	out, warnings, err := adapter.Adapt([]byte(input), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) > 0 {
		t.Fatalf("warnings: %v", warnings)
	}
	s := string(out)
	emu, resp := strings.Index(s, `"handler":"tptoken_emulator"`), strings.Index(s, `"handler":"static_response"`)
	if emu < 0 || resp < 0 || emu > resp {
		t.Fatalf("tptoken_emulator is not ordered before respond:\n%s", s)
	}
	if !strings.Contains(s, `"component_appsecret":"{env.TP_COMPONENT_APPSECRET}"`) || !strings.Contains(s, `"code_ttl":300000000000`) {
		t.Fatalf("unexpected JSON:\n%s", s)
	}
}
