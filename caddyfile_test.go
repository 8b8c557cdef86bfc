package tptoken

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	_ "github.com/caddyserver/caddy/v2/modules/filestorage" // caddy.storage.file_system for `storage`
)

// NewTestDispenser names its input "Testfile"; errors carry "Testfile:<line>".
func atLine(n int) string { return fmt.Sprintf("Testfile:%d", n) }

// wantErr fails unless err is non-nil and contains every one of subs.
func wantErr(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", subs)
	}
	t.Log(err)
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

// sameJSON fails unless got and want marshal to the same JSON.
func sameJSON(t *testing.T, got, want any) {
	t.Helper()
	g, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if string(g) != string(w) {
		t.Errorf("got  %s\nwant %s", g, w)
	}
}

// parseGlobal runs the global option parser on input with the value of a
// previous block (nil for the first) and decodes the resulting app.
func parseGlobal(t *testing.T, input string, existing any) (*App, any, error) {
	t.Helper()
	v, err := parseGlobalOption(caddyfile.NewTestDispenser(input), existing)
	if err != nil {
		return nil, nil, err
	}
	a, ok := v.(httpcaddyfile.App)
	if !ok {
		t.Fatalf("parseGlobalOption returned %T, want httpcaddyfile.App", v)
	}
	if a.Name != "tptoken" {
		t.Fatalf("app name %q, want tptoken", a.Name)
	}
	app := new(App)
	if err := json.Unmarshal(a.Value, app); err != nil {
		t.Fatalf("decoding the app JSON %s: %v", a.Value, err)
	}
	return app, v, nil
}

func dur(s string) caddy.Duration {
	d, err := caddy.ParseDuration(s)
	if err != nil {
		panic(err)
	}
	return caddy.Duration(d)
}

const (
	aesKey43   = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"
	encKey32   = "0123456789abcdef0123456789abcdef"
	encKeyHex  = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	encKeyB64  = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	storageTmp = `{"module":"file_system","root":"/tmp/x"}`
)

func TestCaddyfileGlobalOptionParsesEveryForm(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    *Component
		storage string // JSON of the storage override, "" for none
	}{
		{
			name: "minimal block with placeholder secret",
			input: `tptoken {
				component_appid tt_comp
				component_appsecret {env.TP_COMPONENT_APPSECRET}
			}`,
			want: &Component{ComponentAppID: "tt_comp", ComponentAppSecret: "{env.TP_COMPONENT_APPSECRET}"},
		},
		{
			name: "every option, secrets as env and file placeholders",
			input: `tptoken {
				component_appid      {env.TP_COMPONENT_APPID}
				component_appsecret  {file./run/secrets/tp_secret}
				message_token        {env.TP_MESSAGE_TOKEN}
				encoding_aes_key     {env.TP_ENCODING_AES_KEY}
				api                  v2
				endpoint             https://open.douyin.com
				refresh_ahead        5m
				refresh_token_margin 2d
				encryption_key       {env.TP_STORAGE_KEY}
				previous_encryption_keys {env.TP_STORAGE_KEY_OLD} {file./run/secrets/older_key}
				timeout              3s
				lock_timeout         20s
				max_concurrent_calls 4
				renew_rate           0.5
				sweep_interval       5m
				single_instance
				rebuild_on_empty
				redirect_exchanges   120 30m
				redirect_calls       2
				push_window          5m
			}`,
			want: &Component{
				ComponentAppID: "{env.TP_COMPONENT_APPID}", ComponentAppSecret: "{file./run/secrets/tp_secret}",
				MessageToken: "{env.TP_MESSAGE_TOKEN}", EncodingAESKey: "{env.TP_ENCODING_AES_KEY}",
				API: "v2", Endpoint: "https://open.douyin.com",
				RefreshAhead: dur("5m"), RefreshTokenMargin: dur("48h"), EncryptionKey: "{env.TP_STORAGE_KEY}",
				PreviousEncryptionKeys: []string{"{env.TP_STORAGE_KEY_OLD}", "{file./run/secrets/older_key}"},
				Timeout:                dur("3s"), LockTimeout: dur("20s"), MaxConcurrentCalls: 4, SingleInstance: true,
				RenewRate: 0.5, SweepInterval: dur("5m"),
				RedirectExchanges: 120, RedirectWindow: dur("30m"), RedirectCalls: 2, PushWindow: dur("5m"),
				RebuildOnEmpty: true,
			},
		},
		{
			name:  "redirect exchanges off",
			input: "tptoken {\ncomponent_appid tt_comp\ncomponent_appsecret s\nredirect_exchanges off\n}",
			want:  &Component{ComponentAppID: "tt_comp", ComponentAppSecret: "s", RedirectExchanges: -1},
		},
		{
			name:  "redirect exchanges without a window",
			input: "tptoken {\ncomponent_appid tt_comp\ncomponent_appsecret s\nredirect_exchanges 50\n}",
			want:  &Component{ComponentAppID: "tt_comp", ComponentAppSecret: "s", RedirectExchanges: 50},
		},
		{
			name: "literal keys of the right shape",
			input: `tptoken {
				component_appid tt_comp
				component_appsecret s3cret
				message_token mt
				encoding_aes_key ` + aesKey43 + `
				api v1
				endpoint http://127.0.0.1:9000
			}`,
			want: &Component{ComponentAppID: "tt_comp", ComponentAppSecret: "s3cret", MessageToken: "mt",
				EncodingAESKey: aesKey43, API: "v1", Endpoint: "http://127.0.0.1:9000"},
		},
		{
			name:  "encryption key as 32 characters",
			input: "tptoken {\ncomponent_appid tt_comp\ncomponent_appsecret s\nencryption_key " + encKey32 + "\n}",
			want:  &Component{ComponentAppID: "tt_comp", ComponentAppSecret: "s", EncryptionKey: encKey32},
		},
		{
			name:  "encryption key as 64 hex digits",
			input: "tptoken {\ncomponent_appid tt_comp\ncomponent_appsecret s\nencryption_key " + encKeyHex + "\n}",
			want:  &Component{ComponentAppID: "tt_comp", ComponentAppSecret: "s", EncryptionKey: encKeyHex},
		},
		{
			name:  "encryption key as base64",
			input: "tptoken {\ncomponent_appid tt_comp\ncomponent_appsecret s\nencryption_key " + encKeyB64 + "\n}",
			want:  &Component{ComponentAppID: "tt_comp", ComponentAppSecret: "s", EncryptionKey: encKeyB64},
		},
		{
			name: "storage override with a block",
			input: `tptoken {
				component_appid tt_comp
				component_appsecret s
				storage file_system {
					root /tmp/x
				}
				api v2
			}`,
			want:    &Component{ComponentAppID: "tt_comp", ComponentAppSecret: "s", API: "v2"},
			storage: storageTmp,
		},
		{
			name: "storage override on one line",
			input: `tptoken {
				storage file_system /tmp/x
				component_appid tt_comp
				component_appsecret s
			}`,
			want:    &Component{ComponentAppID: "tt_comp", ComponentAppSecret: "s"},
			storage: storageTmp,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app, _, err := parseGlobal(t, tt.input, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(app.Components) != 1 {
				t.Fatalf("got %d components, want 1", len(app.Components))
			}
			sameJSON(t, app.Components[0], tt.want)
			if got := string(app.StorageRaw); got != tt.storage {
				t.Errorf("storage %s, want %s", got, tt.storage)
			}
		})
	}
}

func TestCaddyfileGlobalOptionErrorsNameTheOptionAndLine(t *testing.T) {
	const head = "tptoken {\ncomponent_appid tt_comp\ncomponent_appsecret s\n" // lines 1-3
	tests := []struct {
		name    string
		input   string
		mention string
		line    int
	}{
		{"argument on the option", "tptoken tt_comp {\ncomponent_appid tt_comp\n}", "tptoken", 1},
		{"unknown option", head + "refresh_behind 5m\n}", `"refresh_behind"`, 4},
		{"duplicate option", head + "api v1\napi v2\n}", "api is set twice", 5},
		{"duplicate component_appid", head + "component_appid tt_other\n}", "component_appid is set twice", 4},
		{"component_appid without value", "tptoken {\ncomponent_appid\n}", "component_appid", 2},
		{"component_appid with two values", "tptoken {\ncomponent_appid a b\n}", "component_appid", 2},
		{"component_appid invalid", "tptoken {\ncomponent_appid tt/01\n}", "component_appid", 2},
		{"component_appid too long", "tptoken {\ncomponent_appid " + strings.Repeat("a", 65) + "\n}", "component_appid", 2},
		{"component_appid missing", "tptoken {\ncomponent_appsecret s\n}", "component_appid is required", 3},
		{"component_appsecret missing", "tptoken {\ncomponent_appid tt_comp\n}", "component_appsecret is required", 3},
		{"empty option", "tptoken", "component_appid is required", 1},
		{"component_appsecret with two values", head + "component_appsecret a b\n}", "component_appsecret", 4},
		{"message_token without value", head + "message_token\n}", "message_token", 4},
		{"encoding_aes_key of the wrong length", head + "encoding_aes_key short\n}", "encoding_aes_key", 4},
		{"encoding_aes_key with two values", head + "encoding_aes_key a b\n}", "encoding_aes_key", 4},
		{"api unknown", head + "api v3\n}", "api", 4},
		{"api without value", head + "api\n}", "api", 4},
		{"endpoint not a URL", head + "endpoint open.douyin.com\n}", "endpoint", 4},
		{"endpoint with two values", head + "endpoint http://a http://b\n}", "endpoint", 4},
		{"refresh_ahead not a duration", head + "refresh_ahead soon\n}", "refresh_ahead", 4},
		{"refresh_ahead zero", head + "refresh_ahead 0s\n}", "refresh_ahead", 4},
		{"refresh_ahead negative", head + "refresh_ahead -1m\n}", "refresh_ahead", 4},
		{"refresh_ahead without value", head + "refresh_ahead\n}", "refresh_ahead", 4},
		{"refresh_token_margin not a duration", head + "refresh_token_margin 3 days\n}", "refresh_token_margin", 4},
		{"timeout not a duration", head + "timeout forever\n}", "timeout", 4},
		{"lock_timeout zero", head + "lock_timeout 0\n}", "lock_timeout", 4},
		{"encryption_key invalid", head + "encryption_key tooshort\n}", "encryption_key", 4},
		{"encryption_key without value", head + "encryption_key\n}", "encryption_key", 4},
		{"previous_encryption_keys without value", head + "encryption_key {env.K}\nprevious_encryption_keys\n}", "previous_encryption_keys", 5},
		{"previous_encryption_keys invalid", head + "encryption_key {env.K}\nprevious_encryption_keys {env.OLD} tooshort\n}", "previous_encryption_keys", 5},
		{"previous_encryption_keys without encryption_key", head + "previous_encryption_keys {env.OLD}\n}", "needs encryption_key", 5},
		{"max_concurrent_calls zero", head + "max_concurrent_calls 0\n}", "max_concurrent_calls", 4},
		{"renew_rate zero", head + "renew_rate 0\n}", "renew_rate", 4},
		{"renew_rate not a number", head + "renew_rate fast\n}", "renew_rate", 4},
		{"sweep_interval negative", head + "sweep_interval -1m\n}", "sweep_interval", 4},
		{"max_concurrent_calls not a number", head + "max_concurrent_calls many\n}", "max_concurrent_calls", 4},
		{"max_concurrent_calls with two values", head + "max_concurrent_calls 1 2\n}", "max_concurrent_calls", 4},
		{"single_instance with a value", head + "single_instance yes\n}", "single_instance", 4},
		{"rebuild_on_empty with a value", head + "rebuild_on_empty yes\n}", "rebuild_on_empty", 4},
		{"redirect_exchanges without value", head + "redirect_exchanges\n}", "redirect_exchanges", 4},
		{"redirect_exchanges zero", head + "redirect_exchanges 0 1h\n}", "redirect_exchanges", 4},
		{"redirect_exchanges not a number", head + "redirect_exchanges many\n}", "redirect_exchanges", 4},
		{"redirect_exchanges bad window", head + "redirect_exchanges 10 soon\n}", "redirect_exchanges window", 4},
		{"redirect_exchanges three values", head + "redirect_exchanges 10 1h 2\n}", "redirect_exchanges", 4},
		{"redirect_calls zero", head + "redirect_calls 0\n}", "redirect_calls", 4},
		{"redirect_calls two values", head + "redirect_calls 1 2\n}", "redirect_calls", 4},
		{"push_window zero", head + "push_window 0s\n}", "push_window", 4},
		{"metrics_per_appid with a value", head + "metrics_per_appid on\n}", "metrics_per_appid", 4},
		{"max_replay_memory without value", head + "max_replay_memory\n}", "max_replay_memory", 4},
		{"max_replay_memory not a size", head + "max_replay_memory lots\n}", "max_replay_memory", 4},
		{"max_replay_memory zero", head + "max_replay_memory 0\n}", "max_replay_memory", 4},
		{"max_replay_memory with two values", head + "max_replay_memory 1MiB 2MiB\n}", "max_replay_memory", 4},
		{"storage without module", head + "storage\n}", "storage", 4},
		{"storage unknown module", head + "storage nope\n}", "caddy.storage.nope", 4},
		{"storage module option invalid", head + "storage file_system {\nroot /a /b\n}\n}", "", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := parseGlobal(t, tt.input, nil)
			wantErr(t, err, tt.mention, atLine(tt.line))
		})
	}
}

func TestCaddyfileGlobalOptionErrorsNeverQuoteSecrets(t *testing.T) {
	const head = "tptoken {\ncomponent_appid tt_comp\ncomponent_appsecret s\n"
	for _, secret := range []string{"SENTINEL-aes-key-value", "SENTINEL-encryption-key-value"} {
		for _, opt := range []string{"encoding_aes_key", "encryption_key", "previous_encryption_keys"} {
			_, _, err := parseGlobal(t, head+opt+" "+secret+"\n}", nil)
			wantErr(t, err, opt)
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Errorf("%s error quotes the secret: %v", opt, err)
			}
		}
	}
}

func TestCaddyfileGlobalOptionSecondBlockAppendsComponent(t *testing.T) {
	_, first, err := parseGlobal(t, `tptoken {
		component_appid tt_one
		component_appsecret {env.ONE}
		storage file_system /tmp/x
	}`, nil)
	if err != nil {
		t.Fatal(err)
	}
	app, _, err := parseGlobal(t, `tptoken {
		component_appid tt_two
		component_appsecret {env.TWO}
		api v2
	}`, first)
	if err != nil {
		t.Fatal(err)
	}
	sameJSON(t, app.Components, []*Component{
		{ComponentAppID: "tt_one", ComponentAppSecret: "{env.ONE}"},
		{ComponentAppID: "tt_two", ComponentAppSecret: "{env.TWO}", API: "v2"},
	})
	if got := string(app.StorageRaw); got != storageTmp {
		t.Errorf("the first block's storage was lost: got %s", got)
	}
}

func TestCaddyfileGlobalOptionSecondBlockMaySetTheSameStorage(t *testing.T) {
	_, first, err := parseGlobal(t, "tptoken {\ncomponent_appid tt_one\ncomponent_appsecret s\n}", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, second, err := parseGlobal(t, "tptoken {\ncomponent_appid tt_two\ncomponent_appsecret s\nstorage file_system /tmp/x\n}", first)
	if err != nil {
		t.Fatal(err)
	}
	app, _, err := parseGlobal(t, "tptoken {\ncomponent_appid tt_three\ncomponent_appsecret s\nstorage file_system {\nroot /tmp/x\n}\n}", second)
	if err != nil {
		t.Fatal(err)
	}
	if len(app.Components) != 3 || string(app.StorageRaw) != storageTmp {
		t.Errorf("got %d components and storage %s", len(app.Components), app.StorageRaw)
	}
}

func TestCaddyfileGlobalOptionRejectsDuplicateComponentAppID(t *testing.T) {
	_, first, err := parseGlobal(t, "tptoken {\ncomponent_appid tt_one\ncomponent_appsecret s\n}", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = parseGlobal(t, "tptoken {\napi v2\ncomponent_appid tt_one\ncomponent_appsecret t\n}", first)
	wantErr(t, err, "component_appid", "tt_one", atLine(3))
}

func TestCaddyfileGlobalOptionRejectsConflictingStorage(t *testing.T) {
	_, first, err := parseGlobal(t, "tptoken {\ncomponent_appid tt_one\ncomponent_appsecret s\nstorage file_system /tmp/x\n}", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = parseGlobal(t, "tptoken {\ncomponent_appid tt_two\ncomponent_appsecret s\nstorage file_system /tmp/y\n}", first)
	wantErr(t, err, "storage", atLine(4))
}

func TestCaddyfileGlobalOptionRejectsForeignExistingValue(t *testing.T) {
	_, err := parseGlobalOption(caddyfile.NewTestDispenser("tptoken {\ncomponent_appid tt\ncomponent_appsecret s\n}"), "not an app")
	wantErr(t, err, "tptoken")
}

func parseHandlerBlock(input string) (*Handler, error) {
	h := new(Handler)
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return h, err
}

func TestCaddyfileHandlerParsesEveryForm(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  *Handler
	}{
		{"no block: every default", "tptoken", &Handler{}},
		{"empty block", "tptoken {\n}", &Handler{}},
		{"appid from a header", "tptoken {\nappid header X-App\n}",
			&Handler{AppID: &AppIDSource{From: "header", Name: "X-App"}}},
		{"appid from a query parameter", "tptoken {\nappid query appid\n}",
			&Handler{AppID: &AppIDSource{From: "query", Name: "appid"}}},
		{"appid from the first path segment", "tptoken {\nappid path\n}",
			&Handler{AppID: &AppIDSource{From: "path"}}},
		{"appid from a placeholder", "tptoken {\nappid {http.request.header.X-Tenant}\n}",
			&Handler{AppID: &AppIDSource{From: "placeholder", Name: "{http.request.header.X-Tenant}"}}},
		{"appid from a placeholder with text around", "tptoken {\nappid {vars.prefix}_{http.request.uri.query.a}\n}",
			&Handler{AppID: &AppIDSource{From: "placeholder", Name: "{vars.prefix}_{http.request.uri.query.a}"}}},
		{"appid from the token slot", "tptoken {\nappid token\n}", &Handler{AppID: &AppIDSource{From: "token"}}},
		{"authorizer token", "tptoken {\ntoken authorizer\n}", &Handler{Token: "authorizer"}},
		{"the token the path takes", "tptoken {\ntoken auto\n}", &Handler{Token: "auto"}},
		{"error_response platform", "tptoken {\nerror_response platform\n}", &Handler{ErrorResponse: "platform"}},
		{"component token", "tptoken {\ntoken component\n}", &Handler{Token: "component"}},
		{"allow is repeatable and keeps order", "tptoken {\nallow tt_b tt_a\nallow tt-c_9\n}",
			&Handler{Allow: []string{"tt_b", "tt_a", "tt-c_9"}}},
		{"component", "tptoken {\ncomponent tt_comp\n}", &Handler{Component: "tt_comp"}},
		{"max_replay_body in KiB", "tptoken {\nmax_replay_body 64KiB\n}", &Handler{MaxReplayBody: 64 << 10}},
		{"max_replay_body in MB", "tptoken {\nmax_replay_body 2MB\n}", &Handler{MaxReplayBody: 2000000}},
		{"max_replay_body in bytes", "tptoken {\nmax_replay_body 512\n}", &Handler{MaxReplayBody: 512}},
		{"component from a placeholder", "tptoken {\ncomponent {env.TP_COMPONENT_APPID}\n}", &Handler{Component: "{env.TP_COMPONENT_APPID}"}},
		{"max_replay_body off", "tptoken {\nmax_replay_body off\n}", &Handler{MaxReplayBody: -1}},
		{"error_response envelope", "tptoken {\nerror_response envelope\n}", &Handler{ErrorResponse: "envelope"}},
		{"error_response handle_errors", "tptoken {\nerror_response handle_errors\n}", &Handler{ErrorResponse: "handle_errors"}},
		{
			name: "everything together",
			input: `tptoken {
				component tt_comp
				appid query tenant
				token authorizer
				allow tt_a
				max_replay_body 1MiB
				error_response handle_errors
				allow tt_b
			}`,
			want: &Handler{Component: "tt_comp", AppID: &AppIDSource{From: "query", Name: "tenant"}, Token: "authorizer",
				Allow: []string{"tt_a", "tt_b"}, MaxReplayBody: 1 << 20, ErrorResponse: "handle_errors"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := parseHandlerBlock(tt.input)
			if err != nil {
				t.Fatal(err)
			}
			sameJSON(t, h, tt.want)
		})
	}
}

func TestCaddyfileHandlerErrorsNameTheSubdirectiveAndLine(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		mention string
		line    int
	}{
		{"argument on the directive", "tptoken tt_a {\n}", "tptoken", 1},
		{"unknown subdirective", "tptoken {\ntoken authorizer\ninjection query\n}", `"injection"`, 3},
		{"duplicate appid", "tptoken {\nappid path\nappid header X\n}", "appid is set twice", 3},
		{"duplicate token", "tptoken {\ntoken authorizer\ntoken component\n}", "token is set twice", 3},
		{"duplicate component", "tptoken {\ncomponent a\ncomponent b\n}", "component is set twice", 3},
		{"duplicate max_replay_body", "tptoken {\nmax_replay_body 1KiB\nmax_replay_body off\n}", "max_replay_body is set twice", 3},
		{"duplicate error_response", "tptoken {\nerror_response envelope\nerror_response envelope\n}", "error_response is set twice", 3},
		{"appid without arguments", "tptoken {\nappid\n}", "appid", 2},
		{"appid header without name", "tptoken {\nappid header\n}", "appid", 2},
		{"appid query without name", "tptoken {\nappid query\n}", "appid", 2},
		{"appid header with two names", "tptoken {\nappid header A B\n}", "appid", 2},
		{"appid path with a name", "tptoken {\n\nappid path x\n}", "appid", 3},
		{"appid token with a name", "tptoken {\nappid token access-token\n}", "appid", 2},
		{"appid from an unknown carrier", "tptoken {\nappid cookie sid\n}", "appid", 2},
		{"appid literal instead of placeholder", "tptoken {\nappid tt_a\n}", "appid", 2},
		{"token without argument", "tptoken {\ntoken\n}", "token", 2},
		{"token with two arguments", "tptoken {\ntoken authorizer component\n}", "token", 2},
		{"token unknown kind", "tptoken {\ntoken refresh\n}", "token", 2},
		{"allow without appids", "tptoken {\nallow\n}", "allow", 2},
		{"allow with an invalid appid", "tptoken {\nallow tt_a tt/b\n}", "allow", 2},
		{"allow with a placeholder", "tptoken {\nallow {env.APPID}\n}", "allow", 2},
		{"component without argument", "tptoken {\ncomponent\n}", "component", 2},
		{"component with two arguments", "tptoken {\ncomponent a b\n}", "component", 2},
		{"component invalid appid", "tptoken {\ncomponent tt/comp\n}", "component", 2},
		{"max_replay_body zero", "tptoken {\nmax_replay_body 0\n}", "use off", 2},
		{"max_replay_body without argument", "tptoken {\nmax_replay_body\n}", "max_replay_body", 2},
		{"max_replay_body with two arguments", "tptoken {\nmax_replay_body 1 MiB\n}", "max_replay_body", 2},
		{"max_replay_body not a size", "tptoken {\nmax_replay_body lots\n}", "max_replay_body", 2},
		{"max_replay_body negative", "tptoken {\nmax_replay_body -1\n}", "max_replay_body", 2},
		{"error_response without argument", "tptoken {\nerror_response\n}", "error_response", 2},
		{"error_response unknown", "tptoken {\nerror_response json\n}", "error_response", 2},
		{"block on a subdirective", "tptoken {\ntoken component {\n}\n}", "", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseHandlerBlock(tt.input)
			wantErr(t, err, tt.mention, atLine(tt.line))
		})
	}
}

func parseEventsBlock(input string) (*Events, error) {
	ev := new(Events)
	err := ev.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return ev, err
}

func TestCaddyfileEventsParsesEveryForm(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  *Events
	}{
		{"every component", "tptoken_events", &Events{}},
		{"every component, empty block", "tptoken_events {\n}", &Events{}},
		{"one component", "tptoken_events tt_comp", &Events{Component: "tt_comp"}},
		{"require_state", "tptoken_events tt_comp {\nrequire_state\n}", &Events{Component: "tt_comp", RequireState: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := parseEventsBlock(tt.input)
			if err != nil {
				t.Fatal(err)
			}
			sameJSON(t, ev, tt.want)
		})
	}
}

func TestCaddyfileEventsErrorsNameTheDirectiveAndLine(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		mention string
		line    int
	}{
		{"two components", "tptoken_events tt_a tt_b", "tptoken_events", 1},
		{"invalid component appid", "\ntptoken_events tt/a", "tptoken_events", 2},
		{"a block with an unknown subdirective", "tptoken_events {\ncomponent tt_a\n}", "unknown subdirective", 2},
		{"require_state with a value", "tptoken_events {\nrequire_state yes\n}", "require_state", 2},
		{"require_state twice", "tptoken_events {\nrequire_state\nrequire_state\n}", "require_state is set twice", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseEventsBlock(tt.input)
			wantErr(t, err, tt.mention, atLine(tt.line))
		})
	}
}

// The durations in the Caddyfile are Caddy's (they accept "d" for days).
func TestCaddyfileGlobalOptionDurationsAcceptDays(t *testing.T) {
	app, _, err := parseGlobal(t, "tptoken {\ncomponent_appid tt\ncomponent_appsecret s\nrefresh_token_margin 3d\n}", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := time.Duration(app.Components[0].RefreshTokenMargin); got != 72*time.Hour {
		t.Errorf("refresh_token_margin %v, want 72h", got)
	}
}

// metrics_per_appid is an app-wide switch: set in one block, it stays on when
// a later block (another component) leaves it out.
func TestCaddyfileGlobalOptionMetricsPerAppIDIsAppWide(t *testing.T) {
	app, first, err := parseGlobal(t, "tptoken {\ncomponent_appid tt_one\ncomponent_appsecret s\nmetrics_per_appid\n}", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !app.MetricsPerAppID {
		t.Fatal("metrics_per_appid did not set the app's option")
	}
	app, _, err = parseGlobal(t, "tptoken {\ncomponent_appid tt_two\ncomponent_appsecret s\n}", first)
	if err != nil {
		t.Fatal(err)
	}
	if !app.MetricsPerAppID || len(app.Components) != 2 {
		t.Fatalf("after a second block: metrics_per_appid %v, %d components", app.MetricsPerAppID, len(app.Components))
	}
	app, _, err = parseGlobal(t, "tptoken {\ncomponent_appid tt_one\ncomponent_appsecret s\n}", nil)
	if err != nil {
		t.Fatal(err)
	}
	if app.MetricsPerAppID {
		t.Fatal("metrics_per_appid is on without the option")
	}
}

// max_replay_memory is app-wide: one block sets it for every route, and two
// blocks that disagree are an error on the second one's line.
func TestCaddyfileGlobalOptionMaxReplayMemoryIsAppWide(t *testing.T) {
	app, first, err := parseGlobal(t, "tptoken {\ncomponent_appid tt_one\ncomponent_appsecret s\nmax_replay_memory 32MiB\n}", nil)
	if err != nil {
		t.Fatal(err)
	}
	if app.MaxReplayMemory != 32<<20 {
		t.Fatalf("max_replay_memory = %d", app.MaxReplayMemory)
	}
	app, _, err = parseGlobal(t, "tptoken {\ncomponent_appid tt_two\ncomponent_appsecret s\n}", first)
	if err != nil || app.MaxReplayMemory != 32<<20 {
		t.Fatalf("after a second block: %d, %v", app.MaxReplayMemory, err)
	}
	_, _, err = parseGlobal(t, "tptoken {\ncomponent_appid tt_two\ncomponent_appsecret s\nmax_replay_memory 16MiB\n}", first)
	wantErr(t, err, "max_replay_memory is app-wide", atLine(4))
}
