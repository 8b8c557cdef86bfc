package tptoken

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// Admin API tests run a real Caddy with its admin endpoint on a free loopback
// port, in front of the emulator (see e2e_helpers_test.go). Like every
// end-to-end test they never run in parallel.

type adminAnswer struct {
	Status int
	Header http.Header
	Body   string
}

// adminCall sends a request to the admin endpoint at addr, with the Origin
// header Caddy requires.
func adminCall(t *testing.T, addr, method, path, body string) adminAnswer {
	t.Helper()
	// Caddy stops the admin server of the previous config in the background
	// (replaceLocalAdminServer), and both listen on the address for a moment:
	// a connection the old one accepts just before it closes ends without an
	// answer. Such a request was never served, so it is sent again, briefly.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, err := http.NewRequest(method, "http://"+addr+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Origin", "http://"+addr)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
		if err != nil {
			if (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return adminAnswer{Status: resp.StatusCode, Header: resp.Header, Body: string(b)}
	}
}

// adminDo calls the admin API of x, checks that the answer holds no secret,
// and returns it.
func (x *e2e) adminDo(method, path, body string) adminAnswer {
	x.t.Helper()
	a := adminCall(x.t, x.admin, method, path, body)
	x.assertNoSecretIn(method+" "+path, a.Body)
	return a
}

// adminJSON calls the admin API, wants the status and decodes the answer into out.
func (x *e2e) adminJSON(method, path, body string, want int, out any) adminAnswer {
	x.t.Helper()
	a := x.adminDo(method, path, body)
	if a.Status != want {
		x.t.Fatalf("%s %s: status %d, want %d: %s", method, path, a.Status, want, a.Body)
	}
	if ct := a.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		x.t.Fatalf("%s %s: Content-Type %q", method, path, ct)
	}
	if out != nil {
		if err := json.Unmarshal([]byte(a.Body), out); err != nil {
			x.t.Fatalf("%s %s: %v: %s", method, path, err, a.Body)
		}
	}
	return a
}

// adminError wants an error status and a JSON error naming each of mention.
func (x *e2e) adminError(method, path, body string, want int, mention ...string) adminAnswer {
	x.t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	a := x.adminJSON(method, path, body, want, &e)
	for _, m := range mention {
		if !strings.Contains(e.Error, m) {
			x.t.Errorf("%s %s: error %q does not mention %q", method, path, e.Error, m)
		}
	}
	return a
}

func TestAdminAPIListsAndShowsAuthorizersWithoutTokenValues(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			x := newE2E(t, fam, emulator.Lifetimes{}, withAdmin())
			x.authorize("tt01app", "tt02app", "tt03app")

			var page authorizerList
			x.adminJSON("GET", "/tptoken/authorizers?limit=2", "", 200, &page)
			if len(page.Authorizers) != 2 || page.Authorizers[0].AppID != "tt01app" || page.Authorizers[1].AppID != "tt02app" || page.Next != "tt02app" {
				t.Fatalf("first page = %+v", page)
			}
			if page.ComponentAppID != e2eComponent || page.Family != fam {
				t.Fatalf("page names component %q family %q", page.ComponentAppID, page.Family)
			}
			for _, in := range page.Authorizers {
				if in.State != tokensource.StateActive || in.Family != fam || in.Generation < 1 || in.AccessExpiry.IsZero() ||
					in.RefreshExpiry.IsZero() || in.LastRefresh.IsZero() || len(in.Permissions) == 0 {
					t.Fatalf("authorizer %+v", in)
				}
			}
			page = authorizerList{}
			x.adminJSON("GET", "/tptoken/authorizers?after=tt02app&limit=2", "", 200, &page)
			if len(page.Authorizers) != 1 || page.Authorizers[0].AppID != "tt03app" || page.Next != "" {
				t.Fatalf("last page = %+v", page)
			}
			x.adminJSON("GET", "/tptoken/authorizers/", "", 200, &page) // default limit, trailing slash
			if len(page.Authorizers) != 3 {
				t.Fatalf("default page has %d authorizers", len(page.Authorizers))
			}

			var in tokensource.Info
			a := x.adminJSON("GET", "/tptoken/authorizers/tt02app", "", 200, &in)
			if in.AppID != "tt02app" || in.State != tokensource.StateActive {
				t.Fatalf("show = %s", a.Body)
			}
			for _, field := range []string{"token\"", "access_token", "refresh_token"} {
				if strings.Contains(a.Body, field) {
					t.Fatalf("show has a %s field: %s", field, a.Body)
				}
			}

			var comps componentsAnswer
			x.adminJSON("GET", "/tptoken/component", "", 200, &comps)
			if len(comps.Components) != 1 {
				t.Fatalf("components = %+v", comps)
			}
			c := comps.Components[0]
			if c.ComponentAppID != e2eComponent || c.Family != fam || c.TicketReceivedAt.IsZero() || c.TicketAgeSeconds < 0 ||
				c.TokenExpiry.IsZero() || c.TokenExpiresInSeconds <= 0 || c.TokenGeneration < 1 {
				t.Fatalf("component = %+v", c)
			}
			x.adminJSON("GET", "/tptoken/component?component="+e2eComponent, "", 200, &comps)
			x.assertNoSecretIn("debug log", x.debugLog())
		})
	}
}

func TestAdminAPIRejectsBadRequestsWithTheRightStatus(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin())
	x.authorize("tt01app")
	cases := []struct {
		method, path, body string
		status             int
		mention            string
	}{
		{"GET", "/tptoken/authorizers/tt404", "", 404, "no record"},
		{"GET", "/tptoken/authorizers/bad.appid", "", 400, "appid"},
		{"GET", "/tptoken/authorizers?limit=0", "", 400, "limit"},
		{"GET", "/tptoken/authorizers?limit=1001", "", 400, "limit"},
		{"GET", "/tptoken/authorizers?after=bad.appid", "", 400, "after"},
		{"GET", "/tptoken/authorizers?component=ttnope", "", 404, "ttnope"},
		{"GET", "/tptoken/authorizers?component=bad.appid", "", 400, "component"},
		{"GET", "/tptoken/nothing", "", 404, "no tptoken route"},
		{"GET", "/tptoken/authorizers/tt01app/frobnicate", "", 404, "no tptoken route"},
		{"GET", "/tptoken/authorizers/tt01app/refresh/more", "", 404, "no tptoken route"},
		{"PUT", "/tptoken/authorizers", "", 405, "GET"},
		{"POST", "/tptoken/authorizers/tt01app", "", 405, "GET or DELETE"},
		{"GET", "/tptoken/authorizers/tt01app/refresh", "", 405, "POST"},
		{"GET", "/tptoken/import", "", 405, "POST"},
		{"DELETE", "/tptoken/component", "", 405, "GET"},
		{"POST", "/tptoken/authorizers/tt404/refresh", "", 404, "no authorization on record"},
		{"POST", "/tptoken/authorizers/tt404/recover", "", 404, "nothing was changed"},
		{"POST", "/tptoken/authorizers/tt404/recover?new=maybe", "", 400, "new"},
		{"POST", "/tptoken/lookup", `{"appids": "tt01app"}`, 400, "appids"},
		{"GET", "/tptoken/lookup", "", 405, "POST"},
		{"POST", "/tptoken/code", `{"authorization_code": "x", "appid": "bad.appid"}`, 400, "invalid appid"},
		{"POST", "/tptoken/authorizers/tt01app/refresh", `{"force": true}`, 400, "no body"},
		{"POST", "/tptoken/authorizers/tt01app/code", "", 400, "empty body"},
		{"POST", "/tptoken/authorizers/tt01app/code", `{"code": "abc"}`, 400, `unknown field "code"`},
		{"POST", "/tptoken/authorizers/tt01app/code", `{"authorization_code": 42}`, 400, "authorization_code"},
		{"POST", "/tptoken/authorizers/tt01app/code", `{"authorization_code": "SENTINEL-code-value"`, 400, "truncated"},
		{"POST", "/tptoken/authorizers/tt01app/code", `{"authorization_code": "  "}`, 400, "authorization_code"},
		{"POST", "/tptoken/authorizers/tt01app/code", `{"authorization_code": "x"} {}`, 400, "after the value"},
		{"POST", "/tptoken/authorizers/tt01app/code", `{"authorization_code": "` + strings.Repeat("x", 70<<10) + `"}`, 413, "larger"},
		{"POST", "/tptoken/authorizers/tt01app/code", `{"authorization_code": "SENTINEL-unknown-code"}`, 502, "expired or was already used"},
		{"POST", "/tptoken/import", `{"appid": "tt01app"}`, 400, "JSON array"},
		{"POST", "/tptoken/import", `[]`, 400, "no rows"},
		{"POST", "/tptoken/import", "[" + strings.TrimSuffix(strings.Repeat(`{},`, maxImportRows+1), ",") + "]", 413, "batches"},
	}
	for _, c := range cases {
		a := x.adminError(c.method, c.path, c.body, c.status, c.mention)
		if strings.Contains(a.Body, "SENTINEL") || strings.Contains(a.Body, "tt404") || strings.Contains(a.Body, "bad.appid") {
			t.Errorf("%s %s: the error quotes the body or an appid with no record: %s", c.method, c.path, a.Body)
		}
		if c.status == 405 && a.Header.Get("Allow") == "" {
			t.Errorf("%s %s: 405 without Allow", c.method, c.path)
		}
	}
	if x.emu.Stats().App("tt01app").Refreshes != 0 {
		t.Fatal("a rejected request reached the platform")
	}
	x.assertNoSecretIn("debug log", x.debugLog())
}

func TestAdminAPISeedsACodeRefreshesRecoversAndForgets(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin())
	code, err := x.emu.Authorize("tt05app", false)
	if err != nil {
		t.Fatal(err)
	}
	if a := x.call("GET", x.apiPath(), appidHeader("tt05app"), ""); a.Status == 200 {
		t.Fatalf("before the code: %+v", a)
	}
	var in tokensource.Info
	body := `{"authorization_code": "` + code + `"}`
	x.adminJSON("POST", "/tptoken/authorizers/tt05app/code", body, 200, &in)
	if in.AppID != "tt05app" || in.State != tokensource.StateActive || in.Generation != 1 || len(in.Permissions) == 0 {
		t.Fatalf("after the code: %+v", in)
	}
	x.adminJSON("POST", "/tptoken/authorizers/tt05app/code", body, 200, &in) // the same code again: no new exchange
	if s := x.emu.Stats().App("tt05app"); s.Exchanges != 1 || in.Generation != 1 {
		t.Fatalf("seeding the same code twice: %d exchanges, generation %d", s.Exchanges, in.Generation)
	}
	if a := x.call("GET", x.apiPath(), appidHeader("tt05app"), ""); a.Status != 200 || a.Errno != 0 {
		t.Fatalf("after the code: %+v", a)
	}

	before := x.emu.Stats().App("tt05app")
	x.adminJSON("POST", "/tptoken/authorizers/tt05app/refresh", "", 200, &in)
	after := x.emu.Stats().App("tt05app")
	if after.Refreshes != before.Refreshes+1 || in.Generation != 2 || in.State != tokensource.StateActive {
		t.Fatalf("refresh: %d -> %d refreshes, generation %d", before.Refreshes, after.Refreshes, in.Generation)
	}
	x.adminJSON("POST", "/tptoken/authorizers/tt05app/refresh", "{}", 200, &in) // an empty object is no body too
	if in.Generation != 3 {
		t.Fatalf("second refresh: generation %d", in.Generation)
	}

	before = x.emu.Stats().App("tt05app")
	x.adminJSON("POST", "/tptoken/authorizers/tt05app/recover", "", 200, &in)
	after = x.emu.Stats().App("tt05app")
	if after.Retrieves != before.Retrieves+1 || after.Exchanges != before.Exchanges+1 || in.Generation != 4 || in.State != tokensource.StateActive {
		t.Fatalf("recover: retrieves %d -> %d, exchanges %d -> %d, generation %d",
			before.Retrieves, after.Retrieves, before.Exchanges, after.Exchanges, in.Generation)
	}
	if a := x.call("GET", x.apiPath(), appidHeader("tt05app"), ""); a.Status != 200 || a.Errno != 0 {
		t.Fatalf("after recover: %+v", a)
	}

	var del map[string]any
	x.adminJSON("DELETE", "/tptoken/authorizers/tt05app", "", 200, &del)
	if del["deleted"] != true || del["appid"] != "tt05app" {
		t.Fatalf("delete = %v", del)
	}
	x.adminError("GET", "/tptoken/authorizers/tt05app", "", 404, "no record", tokensource.Secret("tt05app").Fingerprint())
	x.adminError("DELETE", "/tptoken/authorizers/tt05app", "", 404, "no record")
	x.adminError("POST", "/tptoken/authorizers/tt05app/refresh", "", 404, "no authorization on record")
	var page authorizerList
	x.adminJSON("GET", "/tptoken/authorizers", "", 200, &page)
	if len(page.Authorizers) != 0 {
		t.Fatalf("after delete the list holds %+v", page.Authorizers)
	}

	// One info line per platform call with the fields operators search by; a
	// request the handler refuses (the call before the code) is debug only.
	log := x.debugLog()
	x.assertNoSecretIn("debug log", log)
	var call, refused string
	for _, line := range strings.Split(log, "\n") {
		if call == "" && strings.Contains(line, `"platform call"`) && strings.Contains(line, `"op":"refresh"`) {
			call = line
		}
		if refused == "" && strings.Contains(line, `"request not served"`) {
			refused = line
		}
	}
	for _, want := range []string{`"level":"info"`, `"appid":"tt05app"`, `"result":"ok"`, `"duration"`, `"component_appid"`} {
		if !strings.Contains(call, want) {
			t.Errorf("the refresh platform call line lacks %s: %s", want, call)
		}
	}
	if !strings.Contains(refused, `"level":"debug"`) {
		t.Errorf("a refused request is not logged at debug: %q", refused)
	}
}

// legacyStore plays the token store of a legacy app on api v1: it exchanges
// codes and refreshes by calling the platform itself, as the legacy code did.
type legacyStore struct {
	t  *testing.T
	x  *e2e
	ct string // component_access_token
}

func newLegacyStore(x *e2e) *legacyStore {
	x.t.Helper()
	if x.family != tokensource.V1 {
		x.t.Fatal("legacyStore speaks api v1")
	}
	l := &legacyStore{t: x.t, x: x}
	var out struct {
		Token string `json:"component_access_token"`
	}
	l.get(emulator.PathV1ComponentToken, url.Values{"component_appid": {e2eComponent},
		"component_appsecret": {e2eSecret}, "component_ticket": {x.emu.Ticket()}}, &out)
	l.ct = out.Token
	return l
}

// get calls the platform's v1 path with q and decodes its answer into out.
func (l *legacyStore) get(path string, q url.Values, out any) {
	l.t.Helper()
	resp, err := http.Get(l.x.emuURL + path + "?" + q.Encode())
	if err != nil {
		l.t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Errno int `json:"errno"`
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || json.Unmarshal(b, &body) != nil || body.Errno != 0 || json.Unmarshal(b, out) != nil {
		l.t.Fatalf("%s: %v %s", path, err, b)
	}
}

// grant uses a code or a refresh token and returns the new refresh token.
func (l *legacyStore) grant(grantType, field, value string) string {
	l.t.Helper()
	var out struct {
		RefreshToken string `json:"authorizer_refresh_token"`
	}
	l.get(emulator.PathV1OAuthToken, url.Values{"component_appid": {e2eComponent}, "component_access_token": {l.ct},
		"grant_type": {grantType}, field: {value}}, &out)
	return out.RefreshToken
}

// authorize has appid authorize the TP (no push) and exchanges the code as the
// legacy app would: it returns the legacy refresh token.
func (l *legacyStore) authorize(x *e2e, appid string) string {
	l.t.Helper()
	code, err := x.emu.Authorize(appid, false)
	if err != nil {
		l.t.Fatal(err)
	}
	return l.grant(emulator.GrantCode, "authorization_code", code)
}

// refresh uses a refresh token as the legacy refresher would; the token given
// is dead afterwards.
func (l *legacyStore) refresh(rt string) string {
	l.t.Helper()
	return l.grant(emulator.GrantRefresh, "authorizer_refresh_token", rt)
}

func TestAdminAPIImportsLegacyRefreshTokensRowByRow(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin())
	legacy := newLegacyStore(x)
	good := legacy.authorize(x, "tt11app")
	dead := legacy.authorize(x, "tt12app")
	legacy.refresh(dead) // the legacy refresher ran after the export: the exported token is spent
	gone := legacy.authorize(x, "tt13app")
	legacy.refresh(gone)
	if err := x.emu.Unauthorize("tt13app", false); err != nil {
		t.Fatal(err)
	}
	x.authorize("tt18app") // already served by tptoken
	active := legacy.authorize(x, "tt19app")

	expiry := time.Now().Add(20 * 24 * time.Hour).UTC().Format(time.RFC3339)
	rows := []string{
		`{"appid": "tt11app", "authorizer_refresh_token": "` + good + `", "refresh_expires_at": "` + expiry + `"}`,
		`{"appid": "tt12app", "authorizer_refresh_token": "` + dead + `", "refresh_expires_at": 1900000000}`,
		`{"appid": "tt13app", "authorizer_refresh_token": "` + gone + `"}`,
		`{"appid": "SENTINEL.swapped-columns", "authorizer_refresh_token": "tt10app"}`,
		`{"appid": "tt14app", "authorizer_refresh_token": ""}`,
		`{"appid": "tt15app", "authorizer_refresh_token": 5}`,
		`{"appid": "tt16app", "token": "SENTINEL-rt-2"}`,
		`{"appid": "tt17app", "authorizer_refresh_token": "SENTINEL-rt-3", "refresh_expires_at": "tomorrow"}`,
		`{"appid": "tt11app", "authorizer_refresh_token": "` + good + `"}`,
		`{"appid": "tt18app", "authorizer_refresh_token": "` + active + `"}`,
	}
	body := "[" + strings.Join(rows, ",\n") + "]"
	want := []struct {
		appid, result, mention string
		state                  tokensource.State
	}{
		{"tt11app", "imported", "", tokensource.StateActive},
		{"tt12app", "recovered", "", tokensource.StateActive},
		{"", "failed", "40004", ""}, // not confirmed: the platform knows no such authorization
		{"", "failed", "invalid appid", ""},
		{"", "failed", "empty", ""},
		{"", "failed", "authorizer_refresh_token", ""},
		{"", "failed", `unknown field "token"`, ""},
		{"", "failed", "refresh_expires_at", ""},
		{"tt11app", "unchanged", "imported before", ""},
		{"tt18app", "skipped", "already on record", ""},
	}
	check := func(ans importAnswer, first bool) {
		t.Helper()
		if ans.ComponentAppID != e2eComponent || len(ans.Results) != len(want) {
			t.Fatalf("import answer = %+v", ans)
		}
		for i, w := range want {
			r := ans.Results[i]
			result, mention := w.result, w.mention
			if !first && (result == "imported" || result == "recovered") {
				result, mention = "unchanged", "imported before" // importing again changes nothing
			}
			if r.Row != i+1 || r.AppID != w.appid || r.Result != result || !strings.Contains(r.Detail, mention) {
				t.Errorf("row %d = %+v, want %s %s (%q)", i+1, r, w.appid, result, mention)
			}
			if (r.AppID == "") != (r.Fingerprint != "") {
				t.Errorf("row %d = %+v: an appid not shown must have a fingerprint, and only then", i+1, r)
			}
			if first && w.state != "" && (r.Info == nil || r.Info.State != w.state) {
				t.Errorf("row %d: authorizer %+v, want state %s", i+1, r.Info, w.state)
			}
		}
	}
	var ans importAnswer
	a := x.adminJSON("POST", "/tptoken/import", body, 200, &ans)
	check(ans, true)
	if strings.Contains(a.Body, "SENTINEL") {
		t.Fatalf("the import answer quotes a submitted token: %s", a.Body)
	}
	if ans.Counts["imported"] != 1 || ans.Counts["recovered"] != 1 || ans.Counts["failed"] != 6 || ans.Counts["unchanged"] != 1 || ans.Counts["skipped"] != 1 {
		t.Fatalf("counts = %v", ans.Counts)
	}
	if s := x.emu.Stats().App("tt12app"); s.Retrieves != 1 || s.Refresh40021 != 1 {
		t.Fatalf("the spent token was not recovered: %+v", s)
	}

	// The imported authorizers serve; the failed ones have no record.
	for _, id := range []string{"tt11app", "tt12app"} {
		if r := x.call("GET", x.apiPath(), appidHeader(id), ""); r.Status != 200 || r.Errno != 0 || r.Data.AppID != id {
			t.Fatalf("%s after import: %+v", id, r)
		}
	}
	for _, id := range []string{"tt13app", "tt14app", "tt15app", "tt16app", "tt17app"} {
		x.adminError("GET", "/tptoken/authorizers/"+id, "", 404, "no record")
	}

	// Importing the same rows again is a no-op: no platform call for the done rows.
	refreshes := x.emu.Stats().Total.Refreshes
	x.adminJSON("POST", "/tptoken/import", body, 200, &ans)
	check(ans, false)
	if got := x.emu.Stats().Total.Refreshes; got != refreshes {
		t.Fatalf("re-import refreshed %d times", got-refreshes)
	}
	x.assertNoSecretIn("debug log", x.debugLog())
}

// Admin routes answer clearly when the running config has no tptoken app,
// and ask which component when it has several.
func TestAdminAPIWithoutTheAppAndWithSeveralComponents(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	t.Cleanup(func() { _ = stopCaddy() })
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	tryLoad := func(apps string) error {
		cfg := fmt.Sprintf(`{"admin": {"listen": %q}, "storage": {"module": "file_system", "root": %q},
			"logging": {"logs": {"default": {"level": "ERROR"}}}, "apps": {%s}}`, addr, t.TempDir(), apps)
		return caddy.Load([]byte(cfg), true)
	}
	load := func(apps string) {
		t.Helper()
		if err := tryLoad(apps); err != nil {
			t.Fatal(err)
		}
	}
	// The admin router loads the app early; a broken app still fails the
	// config with its own error, not hidden behind the admin endpoint.
	err := tryLoad(`"tptoken": {"components": [{"component_appid": "ttcompa"}]}`)
	if err == nil || !strings.Contains(err.Error(), "component_appsecret is required") || strings.Contains(err.Error(), "admin") {
		t.Fatalf("loading a broken tptoken app: %v", err)
	}
	load("")
	for _, p := range []string{"/tptoken/authorizers", "/tptoken/authorizers/tt01app", "/tptoken/component"} {
		a := adminCall(t, addr, "GET", p, "")
		if a.Status != 404 || !strings.Contains(a.Body, "tptoken app is not configured") {
			t.Fatalf("GET %s without the app: %d %s", p, a.Status, a.Body)
		}
	}
	out, err := runCLI(t, "status", "--address", addr)
	if err == nil || !strings.Contains(err.Error(), "HTTP 404: the tptoken app is not configured") {
		t.Fatalf("status without the app: %v\n%s", err, out)
	}

	load(`"tptoken": {"components": [
		{"component_appid": "ttcompa", "component_appsecret": "secret-a", "endpoint": "http://127.0.0.1:9"},
		{"component_appid": "ttcompb", "component_appsecret": "secret-b", "endpoint": "http://127.0.0.1:9", "api": "v2"}]}`)
	a := adminCall(t, addr, "GET", "/tptoken/authorizers", "")
	if a.Status != 400 || !strings.Contains(a.Body, "ttcompa, ttcompb") {
		t.Fatalf("list without component: %d %s", a.Status, a.Body)
	}
	a = adminCall(t, addr, "GET", "/tptoken/authorizers?component=ttcompb", "")
	var page authorizerList
	if err := json.Unmarshal([]byte(a.Body), &page); a.Status != 200 || err != nil || page.ComponentAppID != "ttcompb" ||
		page.Family != tokensource.V2 || page.Authorizers == nil || len(page.Authorizers) != 0 {
		t.Fatalf("list of ttcompb: %d %s", a.Status, a.Body)
	}
	a = adminCall(t, addr, "GET", "/tptoken/component", "")
	var comps componentsAnswer
	if err := json.Unmarshal([]byte(a.Body), &comps); err != nil || len(comps.Components) != 2 ||
		comps.Components[0].ComponentAppID != "ttcompa" || comps.Components[1].ComponentAppID != "ttcompb" {
		t.Fatalf("components: %d %s", a.Status, a.Body)
	}
	if strings.Contains(a.Body, "secret-a") || strings.Contains(a.Body, "secret-b") {
		t.Fatalf("component answer holds a secret: %s", a.Body)
	}
	out, err = runCLI(t, "status", "--address", addr)
	if err != nil || !strings.Contains(out, "ttcompa") || !strings.Contains(out, "ttcompb") || !strings.Contains(out, "Authorizers of ttcompb: 0 shown") {
		t.Fatalf("status with two components: %v\n%s", err, out)
	}
	// No component holds tt01app: that is what it says, not "name a component".
	out, err = runCLI(t, "refresh", "tt01app", "--address", addr)
	if err == nil || !strings.Contains(out, "no record of this appid") || !strings.Contains(out, "under any component") {
		t.Fatalf("refresh of an appid no component holds: %v\n%s", err, out)
	}
	// Nothing pushed a ticket: the health check fails with exit status 2 and says why.
	out, err = runCLI(t, "status", "--check", "--address", addr)
	if exitCodeOf(err) != 2 || !strings.Contains(out, "NOT HEALTHY") || !strings.Contains(out, "ttcompa: no component_ticket received yet") ||
		!strings.Contains(out, "ttcompb: no component_ticket") || strings.Contains(out, "Authorizers of") {
		t.Fatalf("status --check without tickets: exit %d, %v\n%s", exitCodeOf(err), err, out)
	}

	// The admin address may come from the config file, as for `caddy reload`.
	cfgFile := filepath.Join(t.TempDir(), "caddy.json")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`{"admin": {"listen": %q}}`, addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = runCLI(t, "status", "--config", cfgFile, "--component", "ttcompa", "--json")
	var st statusJSON
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || len(st.Components) != 1 || st.Components[0].ComponentAppID != "ttcompa" {
		t.Fatalf("status --config --component --json: %v\n%s", err, out)
	}
}
