package tptoken

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// End-to-end tests of apps' own tokens through a real Caddy: each place a
// route puts the token, what clients sent there removed; failures in the v2
// envelope; a rejected token replayed once; admin API, CLI and metrics.

const (
	e2eApp       = "tt00e2eownapp"
	e2eAppSecret = "e2e-own-app-secret-0042"
)

// appBlock is the app block of the tptoken global option for e2eApp.
const appBlock = `app tt00e2eownapp {
			secret {env.TPT_APP_SECRET}
			tokens client_token app_access_token
			endpoint client_token {{emu}}
			endpoint app_access_token {{emu}}
		}`

// newAppE2E runs Caddy with appBlock and handler (the site's tptoken block),
// the emulator knowing the app.
func newAppE2E(t *testing.T, handler string, opts ...e2eOpt) *e2e {
	t.Helper()
	t.Setenv("TPT_APP_SECRET", e2eAppSecret)
	x := newE2E(t, tokensource.V2, emulator.Lifetimes{}, append([]e2eOpt{withGlobal(appBlock), withHandler(handler)}, opts...)...)
	if err := x.emu.AddApp(e2eApp, e2eAppSecret); err != nil {
		t.Fatal(err)
	}
	return x
}

// Each place an app token goes, with every copy a client sent where the
// platform's APIs take a token removed, and the rest of the request as sent.
func TestAppTokenIsInjectedWhereTheRouteSays(t *testing.T) {
	site := `handle_path /q/* {
		tptoken {
			token app_access_token
			inject query
		}
		reverse_proxy {{emu}} {
			transport tptoken
		}
	}
	handle_path /b/* {
		tptoken {
			token app_access_token
			inject body
		}
		reverse_proxy {{emu}} {
			transport tptoken
		}
	}
	handle_path /x/* {
		tptoken {
			token app_access_token
			inject header X-Token
		}
		reverse_proxy {{emu}} {
			transport tptoken
		}
	}`
	x := newAppE2E(t, "tptoken {\n\t\ttoken client_token\n\t}", withSite(site))
	clientCopies := http.Header{"Access-Token": {"client-copy-1"}, "X-Token": {"client-copy-2"}}

	// header access-token (the default), client_token.
	a := x.call(http.MethodGet, "/api/apps/v1/qrcode/create/?a=1&access_token=client-copy-3&b=%2F", clientCopies, "")
	if a.Status != 200 || a.Data.AppID != e2eApp || a.Data.Token != tokensource.ClientToken {
		t.Fatalf("header: %d %s", a.Status, a.Raw)
	}
	if want := map[string]int{"header:access-token": 1}; !sameCarriers(a.Data.TokenCarriers, want) {
		t.Errorf("header: carriers %v, want %v", a.Data.TokenCarriers, want)
	}
	if a.Data.Query != "a=1&b=%2F" {
		t.Errorf("header: the query reached the platform as %q", a.Data.Query)
	}

	// query access_token, app_access_token.
	a = x.call(http.MethodPost, "/q/api/apps/set_user_storage?openid=o1&access_token=client-copy-3&sig=x%2By", clientCopies, `{"kv_list":[]}`)
	if a.Status != 200 || a.Data.Token != tokensource.AppAccessToken || !sameCarriers(a.Data.TokenCarriers, map[string]int{"query:access_token": 1}) {
		t.Fatalf("query: %d %s", a.Status, a.Raw)
	}
	if a.Data.Query != "openid=o1&sig=x%2By&access_token=***" {
		t.Errorf("query: the query reached the platform as %q", a.Data.Query)
	}

	// body access_token: the client's copy removed, the other members kept.
	a = x.call(http.MethodPost, "/b/api/apps/qrcode", clientCopies, `{"access_token":"client-copy-4","path":"pages/index?x=1","width":430}`)
	if a.Status != 200 || a.Data.Token != tokensource.AppAccessToken || !sameCarriers(a.Data.TokenCarriers, map[string]int{"body:access_token": 1}) {
		t.Fatalf("body: %d %s", a.Status, a.Raw)
	}
	sent := x.tap.lastRequest()
	if sent.ContentLength != int64(a.Data.BodyLen) || sent.Header.Get("X-Token") != "" || sent.Header.Get("Access-Token") != "" {
		t.Errorf("body: Content-Length %d for %d bytes, headers %v", sent.ContentLength, a.Data.BodyLen, sent.Header)
	}

	// header X-Token.
	a = x.call(http.MethodPost, "/x/api/v2/tags/text/antidirt", clientCopies, `{"tasks":[]}`)
	if a.Status != 200 || !sameCarriers(a.Data.TokenCarriers, map[string]int{"header:x-token": 1}) {
		t.Fatalf("X-Token: %d %s", a.Status, a.Raw)
	}

	// A body the token cannot be put in is refused before any fetch.
	before := x.emu.Stats().AppToken(e2eApp, tokensource.AppAccessToken).Fetches
	a = x.call(http.MethodPost, "/b/api/apps/qrcode", nil, `["not", "an", "object"]`)
	if a.Status != http.StatusBadRequest || a.TPToken.Error != "bad_input" || !strings.Contains(a.Message, "JSON object") {
		t.Fatalf("a body that is not an object: %d %s", a.Status, a.Raw)
	}
	if st := x.emu.Stats().AppToken(e2eApp, tokensource.AppAccessToken); st.Fetches != before {
		t.Errorf("a refused request fetched a token")
	}

	// One fetch per kind for all of it, and nothing secret in the log.
	st := x.emu.Stats()
	if st.AppToken(e2eApp, tokensource.ClientToken).Fetches != 1 || st.AppToken(e2eApp, tokensource.AppAccessToken).Fetches != 1 {
		t.Errorf("fetches: %+v", st.Apps)
	}
	x.assertNoSecretIn("the DEBUG log", x.debugLog())
	if _, err := os.Stat(filepath.Join(x.storage, "tptoken", "@apps", e2eApp, "client_token.json")); err != nil {
		t.Errorf("the token is not in storage: %v", err)
	}
}

func sameCarriers(got map[string]int, want map[string]int) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// An app named by the request must be configured for the route's kind: any
// other is refused without a platform call, in the v2 envelope with err_tips.
func TestAppTokenUnknownAppIsRefusedInTheV2Envelope(t *testing.T) {
	x := newAppE2E(t, "tptoken {\n\t\ttoken client_token\n\t\tappid header X-App-Id\n\t}")
	a := x.call(http.MethodGet, "/api/apps/v1/qrcode/create/", http.Header{"X-App-Id": {e2eApp}}, "")
	if a.Status != 200 || a.Data.AppID != e2eApp {
		t.Fatalf("configured app: %d %s", a.Status, a.Raw)
	}
	if sent := x.tap.lastRequest(); sent.Header.Get("X-App-Id") != "" {
		t.Error("the app id carrier reached the platform")
	}
	calls := x.emu.Stats().Calls[emulator.OpClientToken]
	status, _, body := x.rawCall(http.MethodGet, "/api/apps/v1/qrcode/create/", http.Header{"X-App-Id": {"tt00notconfigured"}}, "")
	var env struct {
		ErrNo   int    `json:"err_no"`
		ErrMsg  string `json:"err_msg"`
		ErrTips string `json:"err_tips"`
		TPToken struct {
			Error, AppID, Token string
		} `json:"tptoken"`
	}
	if err := json.Unmarshal([]byte(body), &env); err != nil {
		t.Fatal(err)
	}
	if status != http.StatusForbidden || env.ErrNo == 0 || env.ErrTips == "" || env.ErrTips != env.ErrMsg ||
		env.TPToken.Error != "unknown_app" || env.TPToken.Token != tokensource.ClientToken || env.TPToken.AppID != "tt00notconfigured" {
		t.Fatalf("unknown app: %d %s", status, body)
	}
	if n := x.emu.Stats().Calls[emulator.OpClientToken]; n != calls {
		t.Error("an unknown app cost a platform call")
	}
}

// Drop-in for apps: the appid where the token goes (appid token) picks the
// app; a value that names no configured app may be the client's old token,
// so the answer names it by its fingerprint, never repeats it.
func TestAppTokenSlotNamesTheAppAndNeverEchoesAnOldToken(t *testing.T) {
	x := newAppE2E(t, "tptoken {\n\t\ttoken client_token\n\t\tappid token\n\t}")
	a := x.call(http.MethodGet, "/api/apps/v1/qrcode/create/", http.Header{"Access-Token": {e2eApp}}, "")
	if a.Status != 200 || a.Data.AppID != e2eApp || a.Data.Token != tokensource.ClientToken {
		t.Fatalf("the app named in the token slot: %d %s", a.Status, a.Raw)
	}
	if got := x.tap.lastRequest().Header.Values("Access-Token"); len(got) != 1 || got[0] == e2eApp {
		t.Fatalf("the platform got access-token %q, want the app's client_token only", got)
	}
	calls := x.emu.Stats().Calls[emulator.OpClientToken]
	for _, tc := range []struct {
		old, kind string
		status    int
	}{
		{"clt.an-old-client-token-the-app-still-sends", "bad_appid", http.StatusBadRequest}, // not an appid's alphabet
		{"clt_an_old_client_token_shaped_as_an_appid", "unknown_app", http.StatusForbidden},
	} {
		status, hdr, body := x.rawCall(http.MethodGet, "/api/apps/v1/qrcode/create/", http.Header{"Access-Token": {tc.old}}, "")
		if status != tc.status || !strings.Contains(body, tc.kind) || !strings.Contains(body, "fingerprint") {
			t.Fatalf("an old token in the slot: %d %s", status, body)
		}
		if strings.Contains(body, tc.old) || strings.Contains(fmt.Sprint(hdr), tc.old) || strings.Contains(x.debugLog(), tc.old) {
			t.Fatal("the value sent where the token goes was echoed in the answer or the log")
		}
	}
	if n := x.emu.Stats().Calls[emulator.OpClientToken]; n != calls {
		t.Error("an unknown app cost a platform call")
	}
}

// A token the platform rejects mid-traffic is replaced once and the request
// replayed with the new one; metrics count it under the kind.
func TestAppTokenRejectedIsReplacedAndTheRequestReplayed(t *testing.T) {
	x := newAppE2E(t, "tptoken {\n\t\ttoken app_access_token\n\t}")
	if a := x.call(http.MethodGet, "/api/apps/v1/qrcode/create/", nil, ""); a.Status != 200 {
		t.Fatalf("first call: %s", a.Raw)
	}
	replays := testutil.ToFloat64(defaultMetrics().replays.WithLabelValues(e2eApp, tokensource.AppAccessToken, replayReplayed))
	x.emu.RevokeAppToken(e2eApp, tokensource.AppAccessToken)
	a := x.call(http.MethodPost, "/api/apps/v1/qrcode/create/", nil, `{"path":"p"}`)
	if a.Status != 200 || a.Data.AppID != e2eApp || a.Data.BodyLen != len(`{"path":"p"}`) {
		t.Fatalf("after the revocation: %d %s", a.Status, a.Raw)
	}
	st := x.emu.Stats().AppToken(e2eApp, tokensource.AppAccessToken)
	if st.DownstreamInvalid != 1 || st.Fetches != 2 {
		t.Fatalf("emulator: %+v", st)
	}
	if got := testutil.ToFloat64(defaultMetrics().replays.WithLabelValues(e2eApp, tokensource.AppAccessToken, replayReplayed)); got != replays+1 {
		t.Errorf("replays_total{token=app_access_token,result=replayed} went from %v to %v", replays, got)
	}
	if got := testutil.ToFloat64(defaultMetrics().lookups.WithLabelValues(e2eApp, tokensource.AppAccessToken, lookupHit)); got < 1 {
		t.Error("token_lookups_total has no hit for the app token")
	}
	if !strings.Contains(x.debugLog(), "replaying once with a fresh one") {
		t.Error("the replay was not logged")
	}
	x.assertNoSecretIn("the DEBUG log", x.debugLog())
}

// A refused fetch tells the client what to do, in the envelope; the secret
// is in no answer and no log line.
func TestAppTokenRefusedCredentialsAreAClearError(t *testing.T) {
	x := newAppE2E(t, "tptoken {\n\t\ttoken client_token\n\t}")
	if err := x.emu.AddApp(e2eApp, "another-secret-than-tptoken-has"); err != nil {
		t.Fatal(err)
	}
	a := x.call(http.MethodGet, "/api/apps/v1/qrcode/create/", nil, "")
	if a.Status != http.StatusBadGateway || a.Errno != 10013 || !strings.Contains(a.Message, "check its secret") ||
		!strings.Contains(a.Message, e2eApp) {
		t.Fatalf("refused credentials: %d %s", a.Status, a.Raw)
	}
	x.assertNoSecretIn("the answer", a.Raw)
	x.assertNoSecretIn("the DEBUG log", x.debugLog())
}

// The admin API and the CLI show the app tokens' state, never a token.
func TestAppTokenAdminAndCLIShowStateNeverTheToken(t *testing.T) {
	x := newAppE2E(t, "tptoken {\n\t\ttoken client_token\n\t}", withAdmin())
	if a := x.call(http.MethodGet, "/api/apps/v1/qrcode/create/", nil, ""); a.Status != 200 {
		t.Fatal(a.Raw)
	}
	var list appsAnswer
	x.adminJSON(http.MethodGet, "/tptoken/apps", "", 200, &list)
	if len(list.Apps) != 2 || list.Apps[0].Kind != tokensource.ClientToken || list.Apps[0].Generation != 1 ||
		list.Apps[0].Expiry.IsZero() || list.Apps[1].Generation != 0 || list.Apps[0].GraceSeconds != 300 {
		t.Fatalf("GET /tptoken/apps: %+v", list)
	}
	var ref appRefreshAnswer
	x.adminJSON(http.MethodPost, "/tptoken/apps/"+e2eApp+"/client_token/refresh", "", 200, &ref)
	if ref.Generation != 2 || ref.PreviousUsableForSeconds != 300 {
		t.Fatalf("refresh: %+v", ref)
	}
	x.adminError(http.MethodGet, "/tptoken/apps/tt00notconfigured/client_token", "", 404, "fingerprint")
	x.adminError(http.MethodGet, "/tptoken/apps/"+e2eApp+"/access_token", "", 400, "client_token or app_access_token")

	out, err := x.cli("apps")
	if err != nil || !strings.Contains(out, e2eApp) || !strings.Contains(out, "client_token") {
		t.Fatalf("caddy tptoken apps: %v\n%s", err, out)
	}
	out, err = x.cli("apps", e2eApp, "client_token")
	if err != nil || !strings.Contains(out, "generation:") || !strings.Contains(out, "2") {
		t.Fatalf("caddy tptoken apps <appid> <kind>: %v\n%s", err, out)
	}
	out, err = x.cli("refresh", "--app", e2eApp, "--kind", "client_token")
	if err != nil || !strings.Contains(out, "previous token still works") {
		t.Fatalf("caddy tptoken refresh --app: %v\n%s", err, out)
	}
	if _, err := x.cli("refresh", "--app", "tt00notconfigured"); err == nil || strings.Contains(err.Error(), "tt00notconfigured") {
		t.Fatalf("refresh of an unknown app: %v", err)
	}
	out, err = x.cli("status")
	if err != nil || !strings.Contains(out, "App credentials") {
		t.Fatalf("caddy tptoken status: %v\n%s", err, out)
	}
	if st := x.emu.Stats().AppToken(e2eApp, tokensource.ClientToken); st.Fetches != 3 {
		t.Errorf("fetches %d, want 3 (one request, two forced)", st.Fetches)
	}
}

// An app-only configuration: no component at all.
func TestAppOnlyConfigurationServes(t *testing.T) {
	t.Setenv("TPT_APP_SECRET", e2eAppSecret)
	emu, err := emulator.New(emulator.Config{ComponentAppID: "tt00unused", ComponentAppSecret: "unused",
		Apps: []emulator.AppCred{{AppID: e2eApp, Secret: e2eAppSecret}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(emu)
	defer srv.Close()
	proxy := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	logs, err := loadWithLog(t, "\ttptoken {\n\t\t"+strings.ReplaceAll(appBlock, "{{emu}}", srv.URL)+"\n\t}", `http://`+proxy+` {
	tptoken {
		token client_token
	}
	reverse_proxy `+srv.URL+` {
		transport tptoken
	}
}`)
	t.Cleanup(func() { _ = caddy.Stop() })
	if err != nil {
		t.Fatalf("%v\n%s", err, logs)
	}
	resp, err := http.Get("http://" + proxy + "/api/apps/v1/qrcode/create/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a struct {
		ErrNo int                     `json:"err_no"`
		Data  emulator.DownstreamData `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || a.ErrNo != 0 || a.Data.AppID != e2eApp {
		t.Fatalf("%v %+v", err, a)
	}
}

// A config reload keeps the app token sources (and their tokens): no new fetch.
func TestAppTokenSurvivesAConfigReload(t *testing.T) {
	x := newAppE2E(t, "tptoken {\n\t\ttoken client_token\n\t}")
	first := x.call(http.MethodGet, "/api/apps/v1/qrcode/create/", nil, "")
	x.start() // the same config again: a reload
	// A keep-alive connection to the old server may be reset by the handover:
	// such a request was never served, and is sent again.
	x.client.CloseIdleConnections()
	second, err := x.tryCall(http.MethodGet, "/api/apps/v1/qrcode/create/", nil, "")
	for i := 0; err != nil && isConnectionReset(err) && i < 20; i++ {
		time.Sleep(50 * time.Millisecond)
		second, err = x.tryCall(http.MethodGet, "/api/apps/v1/qrcode/create/", nil, "")
	}
	if err != nil {
		t.Fatal(err)
	}
	if first.Status != 200 || second.Status != 200 {
		t.Fatalf("%s / %s", first.Raw, second.Raw)
	}
	if n := x.emu.Stats().AppToken(e2eApp, tokensource.ClientToken).Fetches; n != 1 {
		t.Fatalf("%d fetches across a reload, want 1", n)
	}
}

// The shortcut in one site for both: a path-matched tptoken_proxy injecting
// the app's client_token (its upstream: the app's endpoint for the kind),
// and the catch-all one injecting authorizer tokens named in the token slot.
func TestAppTokenAndAuthorizerShortcutsShareASite(t *testing.T) {
	x := newAppE2E(t, "", withRoute("tptoken_proxy /api/apps/v1/qrcode/* {\n\t\ttoken client_token\n\t}\n\ttptoken_proxy"))
	x.authorize("tt01app")
	a := x.call(http.MethodGet, "/api/apps/v1/qrcode/create/", http.Header{"Access-Token": {"an-old-token"}}, "")
	if a.Status != 200 || a.Data.AppID != e2eApp || a.Data.Token != tokensource.ClientToken {
		t.Fatalf("the app route: %d %s", a.Status, a.Raw)
	}
	b := x.call(http.MethodGet, "/api/apps/v2/basic_info/get_info/", http.Header{"Access-Token": {"tt01app"}}, "")
	if b.Status != 200 || b.Data.AppID != "tt01app" || b.Data.Token != "authorizer" {
		t.Fatalf("the authorizer route: %d %s", b.Status, b.Raw)
	}
}
