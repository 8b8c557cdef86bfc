package tptoken

import (
	"fmt"
	"strings"
	"testing"
)

func TestCaddyfileAppBlocksParse(t *testing.T) {
	app, _, err := parseGlobal(t, `tptoken {
	component_appid tt_comp
	component_appsecret {env.S}
	app tt_app_1 {
		secret {env.APP_SECRET}
		tokens client_token app_access_token
		endpoint client_token https://open.douyin.com
		endpoint app_access_token https://minigame.zijieapi.com/mgplatform
		refresh_ahead 20m
		grace 5m
		encryption_key {env.K}
		previous_encryption_keys {env.K1} {env.K2}
		timeout 3s
		lock_timeout 4s
		single_instance
	}
	app {env.APP2} {
		secret {file./run/secrets/app2}
		tokens client_token
	}
}`, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(app.Components) != 1 {
		t.Fatalf("components: %+v", app.Components)
	}
	sameJSON(t, app.AppCredentials, []*AppCredential{
		{AppID: "tt_app_1", Secret: "{env.APP_SECRET}", Tokens: []string{"client_token", "app_access_token"},
			Endpoints:    map[string]string{"client_token": "https://open.douyin.com", "app_access_token": "https://minigame.zijieapi.com/mgplatform"},
			RefreshAhead: dur("20m"), Grace: dur("5m"), EncryptionKey: "{env.K}", PreviousEncryptionKeys: []string{"{env.K1}", "{env.K2}"},
			Timeout: dur("3s"), LockTimeout: dur("4s"), SingleInstance: true},
		{AppID: "{env.APP2}", Secret: "{file./run/secrets/app2}", Tokens: []string{"client_token"}},
	})
	// A block of app blocks only configures no component; a second block adds apps.
	app2, _, err := parseGlobal(t, "tptoken {\n\tapp tt_app_3 {\n\t\tsecret {env.S3}\n\t\ttokens app_access_token\n\t}\n}", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(app2.Components) != 0 || len(app2.AppCredentials) != 1 {
		t.Fatalf("app-only block: %+v %+v", app2.Components, app2.AppCredentials)
	}
}

func TestCaddyfileAppBlockErrorsNameTheOptionAndLine(t *testing.T) {
	block := func(body string) string {
		return "tptoken {\n\tapp tt_app_1 {\n" + body + "\n\t}\n}"
	}
	tests := []struct {
		name, input, mention string
		line                 int
	}{
		{"no appid", "tptoken {\n\tapp {\n\t\tsecret s\n\t}\n}", "app: want the app's appid", 2},
		{"bad appid", "tptoken {\n\tapp tt/1 {\n\t}\n}", "app \"tt/1\"", 2},
		{"no secret", block("\t\ttokens client_token"), "needs its appid and its secret", 2},
		{"no tokens", block("\t\tsecret {env.S}"), "tokens is required", 2},
		{"unknown kind", block("\t\tsecret {env.S}\n\t\ttokens access_token"), "tokens \"access_token\"", 4},
		{"kind twice", block("\t\tsecret {env.S}\n\t\ttokens client_token client_token"), "client_token is named twice", 4},
		{"endpoint of a kind not kept", block("\t\tsecret {env.S}\n\t\ttokens client_token\n\t\tendpoint app_access_token https://x.example"),
			"does not keep a app_access_token", 2},
		{"endpoint not a URL", block("\t\tsecret {env.S}\n\t\ttokens client_token\n\t\tendpoint client_token open.douyin.com"), "absolute http(s) URL", 5},
		{"endpoint without kind", block("\t\tsecret {env.S}\n\t\tendpoint https://open.douyin.com"), "endpoint: want <kind> <url>", 4},
		{"unknown option", block("\t\tsecret {env.S}\n\t\ttoken client_token"), `unknown option "token"`, 4},
		{"option twice", block("\t\tsecret {env.S}\n\t\tsecret {env.T}"), "secret is set twice", 4},
		{"a flag with an argument", block("\t\tsecret {env.S}\n\t\ttokens client_token\n\t\tsingle_instance yes"), `single_instance takes no arguments (got "yes")`, 5},
		{"bad grace", block("\t\tsecret {env.S}\n\t\ttokens client_token\n\t\tgrace 0s"), "grace", 5},
		{"same app and kind twice", "tptoken {\n\tapp tt_a {\n\t\tsecret {env.S}\n\t\ttokens client_token\n\t}\n\tapp tt_a {\n\t\tsecret {env.S}\n\t\ttokens client_token\n\t}\n}",
			"client_token is configured twice", 6},
		{"component option without component_appid", "tptoken {\n\tapi v2\n\tapp tt_a {\n\t\tsecret {env.S}\n\t\ttokens client_token\n\t}\n}",
			"component_appid is required", 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := parseGlobal(t, tt.input, nil)
			wantErr(t, err, tt.mention, atLine(tt.line))
		})
	}
}

func TestCaddyfileHandlerAppTokenForms(t *testing.T) {
	for _, tt := range []struct {
		input string
		want  *Handler
	}{
		{"tptoken {\ntoken client_token\n}", &Handler{Token: "client_token"}},
		{"tptoken {\ntoken app_access_token\napp tt_app_1\ninject query\n}",
			&Handler{Token: "app_access_token", App: "tt_app_1", Inject: &InjectPlace{In: "query", Name: "access_token"}}},
		{"tptoken {\ntoken app_access_token\ninject body\n}", &Handler{Token: "app_access_token", Inject: &InjectPlace{In: "body", Name: "access_token"}}},
		{"tptoken {\ntoken app_access_token\ninject header access_token\n}",
			&Handler{Token: "app_access_token", Inject: &InjectPlace{In: "header", Name: "access_token"}}},
		{"tptoken {\ntoken client_token\nappid header X-App-Id\n}",
			&Handler{Token: "client_token", AppID: &AppIDSource{From: "header", Name: "X-App-Id"}}},
	} {
		h, err := parseHandlerBlock(tt.input)
		if err != nil {
			t.Fatalf("%q: %v", tt.input, err)
		}
		sameJSON(t, h, tt.want)
	}
}

func TestCaddyfileHandlerAppTokenErrors(t *testing.T) {
	for _, tt := range []struct {
		name, input, mention string
	}{
		{"app with appid", "tptoken {\ntoken client_token\napp tt_a\nappid header X\n}", "use one"},
		{"component with an app kind", "tptoken {\ntoken client_token\ncomponent tt_c\n}", "remove component"},
		{"allow with an app kind", "tptoken {\ntoken client_token\nallow tt_a\n}", "remove allow"},
		{"app on an authorizer route", "tptoken {\napp tt_a\n}", "app and inject apply to token client_token or app_access_token"},
		{"inject on a component route", "tptoken {\ntoken component\ninject header x\n}", "not to token component"},
		{"inject unknown place", "tptoken {\ntoken client_token\ninject cookie x\n}", "use header <name>, query <name> or body <field>"},
		{"inject header bad name", "tptoken {\ntoken client_token\ninject header \"a b\"\n}", "want a header name"},
		{"app invalid appid", "tptoken {\ntoken client_token\napp tt/a\n}", "app \"tt/a\""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseHandlerBlock(tt.input)
			wantErr(t, err, tt.mention, "Testfile:")
		})
	}
}

// Provision checks what the Caddyfile cannot: the route's app exists and
// keeps the kind.
func TestHandlerAppTokenRouteNeedsAConfiguredApp(t *testing.T) {
	t.Setenv("TPT_APP_SECRET", e2eAppSecret)
	blocks := "\ttptoken {\n\t\t" + strings.ReplaceAll(appBlock, "{{emu}}", "http://127.0.0.1:9") + "\n\t}\n\ttptoken {\n\t\tapp tt00second {\n\t\t\tsecret {env.TPT_APP_SECRET}\n\t\t\ttokens client_token\n\t\t}\n\t}"
	for _, tt := range []struct{ handler, mention string }{
		{"token client_token\n\t\tapp tt00other", "app tt00other has no client_token"},
		{"token client_token", "several apps keep a client_token (tt00e2eownapp, tt00second)"},
		{"token app_access_token\n\t\tapp tt00second", "app tt00second has no app_access_token"},
	} {
		logs, err := loadWithLog(t, blocks, fmt.Sprintf("http://127.0.0.1:%d", freePort(t))+" {\n\ttptoken {\n\t\t"+tt.handler+"\n\t}\n\treverse_proxy http://127.0.0.1:9 {\n\t\ttransport tptoken\n\t}\n}")
		if err == nil || !strings.Contains(err.Error(), tt.mention) {
			t.Errorf("%q: err = %v\n%s", tt.handler, err, logs)
		}
	}
}
