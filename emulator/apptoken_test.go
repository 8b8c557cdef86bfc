package emulator

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

const (
	appX       = "ttx000000000000003"
	appXSecret = "app-x-secret-0003"
)

func withApp(c *Config) { c.Apps = []AppCred{{AppID: appX, Secret: appXSecret}} }

// fetchApp fetches an app token of kind at its endpoint and returns the raw answer.
func (h *harness) fetchApp(path string, body map[string]string) map[string]any {
	h.t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post(h.srv.URL+path, "application/json", strings.NewReader(string(b)))
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		h.t.Fatalf("%s: status %d, not JSON: %v", path, resp.StatusCode, err)
	}
	return out
}

func appAccessBody(secret string) map[string]string {
	return map[string]string{"appid": appX, "secret": secret, "grant_type": "client_credential"}
}

func clientBody(secret string) map[string]string {
	return map[string]string{"client_key": appX, "client_secret": secret, "grant_type": "client_credential"}
}

func tokenOf(t *testing.T, a map[string]any) string {
	t.Helper()
	d, _ := a["data"].(map[string]any)
	v, _ := d["access_token"].(string)
	if v == "" {
		t.Fatalf("no token in %v", a)
	}
	return v
}

// callAPI calls a v2 API with tok in the access-token header and returns err_no (0: accepted).
func (h *harness) callAPI(path, tok string) int {
	h.t.Helper()
	a := h.do(http.MethodGet, path, nil, http.Header{"Access-Token": {tok}}, nil)
	return a.code
}

func TestAppTokenEndpointsAnswerInTheirOwnEnvelopes(t *testing.T) {
	h := newHarness(t, withApp)
	ok := h.fetchApp(PathAppToken, appAccessBody(appXSecret))
	if ok["err_no"].(float64) != 0 || ok["err_tips"] != "success" || !strings.HasPrefix(tokenOf(t, ok), "0801") {
		t.Fatalf("app_access_token answer: %v", ok)
	}
	bad := h.fetchApp(PathAppToken, appAccessBody("wrong"))
	if bad["err_no"].(float64) != ErrNoAppBadSecret || bad["err_tips"] == "" {
		t.Fatalf("bad secret answer: %v", bad)
	}
	grant := h.fetchApp(PathAppToken, map[string]string{"appid": appX, "secret": appXSecret, "grant_type": "x"})
	if grant["err_no"].(float64) != ErrNoAppBadGrant {
		t.Fatalf("bad grant_type answer: %v", grant)
	}
	mg := h.fetchApp(PathMiniGameAppToken, appAccessBody(appXSecret))
	if d := mg["data"].(map[string]any); d["expires_at"] == nil {
		t.Fatalf("the mini-game answer lacks expires_at: %v", mg)
	}

	ct := h.fetchApp(PathClientToken, clientBody(appXSecret))
	d := ct["data"].(map[string]any)
	if ct["message"] != "success" || d["error_code"].(float64) != 0 || !strings.HasPrefix(tokenOf(t, ct), "clt.") {
		t.Fatalf("client_token answer: %v", ct)
	}
	cbad := h.fetchApp(PathClientToken, clientBody("wrong"))
	if d := cbad["data"].(map[string]any); cbad["message"] != "error" || d["error_code"].(float64) != ErrCodeClientSecret {
		t.Fatalf("client_token refusal: %v", cbad)
	}
	unknown := h.fetchApp(PathClientToken, map[string]string{"client_key": "ttnobody", "client_secret": "s", "grant_type": "client_credential"})
	if d := unknown["data"].(map[string]any); d["error_code"].(float64) != ErrCodeClientKey {
		t.Fatalf("unknown client_key: %v", unknown)
	}
}

// A fetch cuts the previous token to the grace and kills the one before: only
// the newest two are valid, the older of them for the grace only.
func TestAppTokenFetchCutsThePreviousAndKeepsTheNewestTwo(t *testing.T) {
	for _, kind := range []struct {
		name, path string
		body       map[string]string
	}{
		{OpAppAccessToken, PathAppToken, appAccessBody(appXSecret)},
		{OpClientToken, PathClientToken, clientBody(appXSecret)},
	} {
		t.Run(kind.name, func(t *testing.T) {
			h := newHarness(t, withApp)
			api := "/api/apps/v1/qrcode/create/"
			t1 := tokenOf(t, h.fetchApp(kind.path, kind.body))
			h.clock.Advance(time.Hour)
			t2 := tokenOf(t, h.fetchApp(kind.path, kind.body))
			if h.callAPI(api, t1) != 0 || h.callAPI(api, t2) != 0 {
				t.Fatal("the previous token must serve during the grace")
			}
			h.clock.Advance(DefaultAppGrace + time.Second)
			if c := h.callAPI(api, t1); c != ErrNoV2AccessTokenExpired {
				t.Fatalf("previous token after the grace: err_no %d, want %d (cut to the grace)", c, ErrNoV2AccessTokenExpired)
			}
			t3 := tokenOf(t, h.fetchApp(kind.path, kind.body))
			h.clock.Advance(time.Second)
			t4 := tokenOf(t, h.fetchApp(kind.path, kind.body)) // t2 is now the third newest: dead
			if c := h.callAPI(api, t2); c != ErrNoV2AccessTokenInvalid {
				t.Fatalf("third newest token: err_no %d, want %d", c, ErrNoV2AccessTokenInvalid)
			}
			if h.callAPI(api, t3) != 0 || h.callAPI(api, t4) != 0 {
				t.Fatal("the newest two must serve")
			}
			st := h.e.Stats().AppToken(appX, kind.name)
			if st.Fetches != 4 || st.KilledAsThird != 1 || st.DownstreamExpired != 1 || st.DownstreamInvalid != 1 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestClientTokenRateIsRefusedWith10020(t *testing.T) {
	h := newHarness(t, withApp, func(c *Config) { c.ClientTokenRate = 3 })
	for range 3 {
		tokenOf(t, h.fetchApp(PathClientToken, clientBody(appXSecret)))
	}
	a := h.fetchApp(PathClientToken, clientBody(appXSecret))
	if d := a["data"].(map[string]any); d["error_code"].(float64) != ErrCodeClientRate {
		t.Fatalf("4th fetch in 5 minutes: %v", a)
	}
	h.clock.Advance(5 * time.Minute)
	tokenOf(t, h.fetchApp(PathClientToken, clientBody(appXSecret)))
	if st := h.e.Stats().AppToken(appX, OpClientToken); st.RateRefused != 1 || st.Fetches != 4 {
		t.Fatalf("stats %+v", st)
	}
}

func TestStableClientTokenIsIdempotentWhileValid(t *testing.T) {
	h := newHarness(t, withApp)
	a := tokenOf(t, h.fetchApp(PathStableClientToken, clientBody(appXSecret)))
	b := tokenOf(t, h.fetchApp(PathStableClientToken, clientBody(appXSecret)))
	if a != b {
		t.Fatal("stable_client_token returned a new token while the current one is valid")
	}
	h.clock.Advance(DefaultAppTokenTTL)
	if c := tokenOf(t, h.fetchApp(PathStableClientToken, clientBody(appXSecret))); c == a {
		t.Fatal("an expired stable token was returned again")
	}
}

// Sample APIs take the token where the platform's take it and answer a bad
// one in their own dialect.
func TestAppTokenSampleAPIsReadTheirCarrierAndDialect(t *testing.T) {
	h := newHarness(t, withApp)
	tok := tokenOf(t, h.fetchApp(PathAppToken, appAccessBody(appXSecret)))
	body, _ := json.Marshal(map[string]string{"access_token": tok, "path": "pages/index"})
	if a := h.do(http.MethodPost, "/api/apps/qrcode", nil, nil, body); a.code != 0 || a.data["token"] != OpAppAccessToken {
		t.Fatalf("qrcode with the token in the body: %v", a.raw)
	}
	// In the header instead: the body API does not see it.
	a := h.do(http.MethodPost, "/api/apps/qrcode", nil, http.Header{"Access-Token": {tok}}, []byte(`{"path":"x"}`))
	if a.raw["errcode"] == nil || a.raw["errcode"].(json.Number).String() != "40002" {
		t.Fatalf("qrcode without a body token: %v", a.raw)
	}
	if a := h.do(http.MethodPost, "/api/apps/set_user_storage", map[string][]string{"access_token": {tok}}, nil, nil); a.code != 0 {
		t.Fatalf("set_user_storage with the token in the query: %v", a.raw)
	}
	if a := h.do(http.MethodPost, "/api/v2/tags/text/antidirt", nil, http.Header{"X-Token": {tok}}, nil); a.code != 0 {
		t.Fatalf("antidirt with X-Token: %v", a.raw)
	}
	if a := h.do(http.MethodPost, "/api/apps/set_user_storage", nil, http.Header{"Access-Token": {tok}}, nil); a.code != ErrNoV2AccessTokenInvalid {
		t.Fatalf("set_user_storage with the token in a header, not the query: %v", a.raw)
	}
	h.e.RevokeAppToken(appX, OpAppAccessToken)
	a = h.do(http.MethodGet, "/js/getticket/", nil, http.Header{"Access-Token": {tok}}, nil)
	d, _ := a.raw["data"].(map[string]any)
	if d == nil || d["error_code"].(json.Number).String() != "2190002" {
		t.Fatalf("getticket with a revoked token: %v", a.raw)
	}
}

func TestRateLimitedFaultRefusesBothKinds(t *testing.T) {
	h := newHarness(t, withApp)
	for _, op := range []string{OpAppAccessToken, OpClientToken} {
		if err := h.e.SetFaults(op, Faults{RateLimited: true}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.Post(h.srv.URL+PathAppToken, "application/json", strings.NewReader(`{"appid":"`+appX+`","secret":"`+appXSecret+`","grant_type":"client_credential"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("app_access_token under RateLimited: HTTP %d", resp.StatusCode)
	}
	a := h.fetchApp(PathClientToken, clientBody(appXSecret))
	if d := a["data"].(map[string]any); d["error_code"].(float64) != ErrCodeClientRate {
		t.Fatalf("client_token under RateLimited: %v", a)
	}
	h.e.ClearFaults()
	tokenOf(t, h.fetchApp(PathClientToken, clientBody(appXSecret)))
	if st := h.e.Stats(); st.AppToken(appX, OpClientToken).RateRefused != 1 || st.AppToken(appX, OpAppAccessToken).RateRefused != 1 {
		t.Fatalf("stats %+v", st.Apps)
	}
}

func TestAppSecretsAndTokensAreInIssuedSecrets(t *testing.T) {
	h := newHarness(t, withApp)
	tok := tokenOf(t, h.fetchApp(PathClientToken, clientBody(appXSecret)))
	got := strings.Join(h.e.IssuedSecrets(), "\n")
	if !strings.Contains(got, appXSecret) || !strings.Contains(got, tok) {
		t.Fatal("IssuedSecrets lacks the app secret or its token")
	}
}

func TestEmulatorCaddyfileAppOptions(t *testing.T) {
	const base = "component_appid tt0123456789abcdef\ncomponent_appsecret s\n"
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("tptoken_emulator {\n" + base +
		"app tt0000app1 {env.A1}\napp tt0000app2 s2\napp_token_ttl 6s\napp_grace 2s\nclient_token_rate 10\n}"))
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Apps) != 2 || h.Apps[0] != (AppCred{AppID: "tt0000app1", Secret: "{env.A1}"}) || time.Duration(h.AppTokenTTL) != 6*time.Second ||
		time.Duration(h.AppGrace) != 2*time.Second || h.ClientTokenRate != 10 {
		t.Fatalf("%+v", h)
	}
	for _, tt := range []struct{ input, want string }{
		{"app tt0000app1", "app: expected <appid> <secret>"},
		{"app a/b s", `app: invalid appid "a/b"`},
		{"client_token_rate 0", "client_token_rate"},
		{"app_grace 0s", "app_grace"},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("tptoken_emulator {\n" + base + tt.input + "\n}"))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: err = %v, want %q", tt.input, err, tt.want)
		}
	}
	// Provisioned, the apps are issued tokens, secrets resolved.
	t.Setenv("TPTOKEN_EMU_APP_SECRET", "app-secret-from-env")
	p := &Handler{ComponentAppID: "tt00000000000000e2", ComponentAppSecret: "s", TicketInterval: caddy.Duration(time.Hour),
		Apps: []AppCred{{AppID: appX, Secret: "{env.TPTOKEN_EMU_APP_SECRET}"}}}
	provision(t, p)
	t.Cleanup(func() { p.Cleanup() })
	w := serve(p, httptest.NewRequest("POST", PathClientToken, strings.NewReader(`{"client_key":"`+appX+`","client_secret":"app-secret-from-env","grant_type":"client_credential"}`)))
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"access_token":"clt.`) {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}
