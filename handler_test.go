package tptoken

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// End-to-end tests of the handler and the transport through a real Caddy (the
// harness in e2e_helpers_test.go): they never run in parallel.

// withSite adds lines to the tptoken site block (before the handler).
func withSite(lines string) e2eOpt { return func(e *e2e) { e.site = lines } }

// rawCall sends a request through Caddy and returns the status, headers and body
// as they are, for answers that are not the family's JSON.
func (x *e2e) rawCall(method, pathAndQuery string, header http.Header, body string) (int, http.Header, string) {
	x.t.Helper()
	req, err := http.NewRequest(method, x.proxy+pathAndQuery, strings.NewReader(body))
	if err != nil {
		x.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := x.client.Do(req)
	if err != nil {
		x.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		x.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestTokenComponentInjectsTheComponentTokenForTPLevelAPIs(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			x := newE2E(t, fam, emulator.Lifetimes{}, withHandler(`tptoken {
		token component
	}`))
			x.authorize("tt01app", "tt02app")
			path, listField, idField := emulator.PathV1AppList, "authAppList", "authAppId"
			if fam == tokensource.V2 {
				path, listField, idField = emulator.PathV2AppList, "auth_app_list", "auth_appid"
			}
			// No appid is needed; a token the client sent is replaced.
			h := http.Header{"Access-Token": {"client-stale-token"}}
			status, _, raw := x.rawCall("GET", path+"?page=1&size=10&component_access_token=client-stale", h, "")
			if status != 200 {
				t.Fatalf("status %d: %s", status, raw)
			}
			var ans struct {
				Errno *int                       `json:"errno"`
				ErrNo *int                       `json:"err_no"`
				Data  map[string]json.RawMessage `json:"data"`
			}
			if err := json.Unmarshal([]byte(raw), &ans); err != nil {
				t.Fatalf("answer %q: %v", raw, err)
			}
			code := ans.Errno
			if fam == tokensource.V2 {
				code = ans.ErrNo
			}
			if code == nil || *code != 0 {
				t.Fatalf("the platform refused the component token: %s", raw)
			}
			var list []map[string]any
			if err := json.Unmarshal(ans.Data[listField], &list); err != nil {
				t.Fatalf("no %s in %s", listField, raw)
			}
			if len(list) != 2 || list[0][idField] != "tt01app" || list[1][idField] != "tt02app" {
				t.Fatalf("authorized app list = %v", list)
			}

			up := x.tap.lastRequest()
			q := up.URL.Query()
			if fam == tokensource.V1 {
				got := q["component_access_token"]
				if len(got) != 1 || got[0] == "client-stale" || q.Get("component_appid") != e2eComponent {
					t.Fatalf("upstream query holds component_access_token %d times (client's kept: %v), component_appid %q",
						len(got), len(got) > 0 && got[0] == "client-stale", q.Get("component_appid"))
				}
				if q.Has("authorizer_access_token") {
					t.Fatal("an authorizer token was added to a TP-level call")
				}
			} else {
				got := up.Header.Values("Access-Token")
				if len(got) != 1 || got[0] == "client-stale-token" {
					t.Fatalf("upstream got %d access-token headers (client's kept: %v)", len(got), len(got) > 0 && got[0] == "client-stale-token")
				}
			}
			if s := x.emu.Stats().Total; s.ComponentTokenFetches == 0 {
				t.Fatalf("no component token was fetched: %+v", s)
			}
		})
	}
}

func TestHandleErrorsModeExposesTheOutcomeInPlaceholders(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{},
		withSite(`handle_errors {
		respond "{http.tptoken.error} {http.tptoken.errno} appid={http.tptoken.appid}"
	}`),
		withHandler(`tptoken {
		error_response handle_errors
		allow tt01app tt404
	}`))
	x.authorize("tt01app")
	cases := []struct {
		name   string
		appid  string
		status int
		body   string
	}{
		{"missing appid", "", 400, "bad_appid 40001 appid="},
		{"not allowed", "tt02app", 403, "not_allowed 40008 appid=tt02app"},
		{"unknown authorizer", "tt404", 403, "unknown_authorizer 40022 appid=tt404"},
	}
	for _, tc := range cases {
		h := http.Header{}
		if tc.appid != "" {
			h = appidHeader(tc.appid)
		}
		status, hdr, body := x.rawCall("GET", x.apiPath(), h, "")
		if status != tc.status || body != tc.body {
			t.Errorf("%s: got %d %q, want %d %q", tc.name, status, body, tc.status, tc.body)
		}
		if strings.Contains(hdr.Get("Content-Type"), "json") {
			t.Errorf("%s: the handle_errors route did not answer (Content-Type %q)", tc.name, hdr.Get("Content-Type"))
		}
	}
	// A served request is untouched by the error route.
	if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 || a.Data.AppID != "tt01app" {
		t.Fatalf("served request: %+v", a)
	}
}

func TestExpiredTokenDuringAnOutageGets503WithRetryAfterThenHeals(t *testing.T) {
	const ttl = 3 * time.Second
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{AccessTokenTTL: ttl}, withGlobal("refresh_ahead 1s"))
	x.authorize("tt01app")
	// The token endpoints go down; the downstream API stays up.
	for _, op := range []string{emulator.OpRefresh, emulator.OpRetrieve, emulator.OpExchange, emulator.OpComponentToken} {
		if err := x.emu.SetFaults(op, emulator.Faults{Down: true}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	var a apiAnswer
	served := 0
	for deadline := start.Add(ttl + 5*time.Second); ; {
		a = x.call("GET", x.apiPath(), appidHeader("tt01app"), "")
		if a.Status != 200 {
			break
		}
		if a.Errno != 0 || a.Data.AppID != "tt01app" {
			t.Fatalf("during the outage, before expiry: %+v", a)
		}
		served++
		if time.Now().After(deadline) {
			t.Fatalf("still 200 %v after the token's %v lifetime with the platform down", time.Since(start), ttl)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if served == 0 {
		t.Fatal("the current token was not served at all once the platform went down")
	}
	if a.Status != 503 || a.Errno != 40000 || a.TPToken.Error != "unavailable" {
		t.Fatalf("after expiry: status %d errno %d kind %q: %s", a.Status, a.Errno, a.TPToken.Error, a.Raw)
	}
	ra, err := strconv.Atoi(a.Header.Get("Retry-After"))
	if err != nil || ra < 1 || a.TPToken.RetryAfter != ra {
		t.Fatalf("Retry-After header %q, envelope retry_after %d", a.Header.Get("Retry-After"), a.TPToken.RetryAfter)
	}
	if s := x.emu.Stats().App("tt01app"); s.DownstreamInvalid != 0 {
		t.Fatalf("an expired token was sent downstream %d times", s.DownstreamInvalid)
	}

	x.emu.ClearFaults()
	for deadline := time.Now().Add(time.Duration(ra)*time.Second + 10*time.Second); ; {
		a = x.call("GET", x.apiPath(), appidHeader("tt01app"), "")
		if a.Status == 200 {
			break
		}
		if a.Status != 503 || time.Now().After(deadline) {
			t.Fatalf("after the outage: %+v", a)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if a.Errno != 0 || a.Data.AppID != "tt01app" {
		t.Fatalf("after healing: %+v", a)
	}
	if s := x.emu.Stats().App("tt01app"); s.Refreshes < 1 || s.Refresh40021 != 0 {
		t.Fatalf("healing did not refresh cleanly: %+v", s)
	}
}

func TestRevokedTokenIsReplacedAndTheRequestReplayedOnceWithTheSameBody(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			x := newE2E(t, fam, emulator.Lifetimes{}, withSite(`header >X-Tptoken-Replayed "{http.tptoken.replayed}"`))
			x.authorize("tt01app", "tt02app")
			if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 {
				t.Fatalf("before the revocation: %+v", a)
			}
			before := x.emu.Stats()
			if !x.emu.RevokeAccessToken("tt01app", fam) {
				t.Fatal("nothing to revoke")
			}
			body := `{"items":[` + strings.Repeat(`{"k":"v"},`, 2000) + `{"k":"end"}]}`
			a := x.call("POST", x.apiPath()+"?op=save", appidHeader("tt01app"), body)
			if a.Status != 200 || a.Errno != 0 || a.Data.AppID != "tt01app" {
				t.Fatalf("after the revocation: %+v", a)
			}
			if a.Data.BodySHA256 != sha256Hex(body) || a.Data.BodyLen != len(body) {
				t.Fatalf("the replay carried a different body: %d bytes, sha256 %s", a.Data.BodyLen, a.Data.BodySHA256)
			}
			if got := a.Header.Get("X-Tptoken-Replayed"); got != "true" {
				t.Fatalf("{http.tptoken.replayed} = %q", got)
			}
			after := x.emu.Stats()
			was, now := before.App("tt01app"), after.App("tt01app")
			if now.DownstreamInvalid-was.DownstreamInvalid != 1 || now.DownstreamOK-was.DownstreamOK != 1 {
				t.Fatalf("want one rejected call and one replay: invalid %d→%d, ok %d→%d",
					was.DownstreamInvalid, now.DownstreamInvalid, was.DownstreamOK, now.DownstreamOK)
			}
			if now.Refreshes-was.Refreshes != 1 || now.Refresh40021 != 0 {
				t.Fatalf("want one refresh: %+v → %+v", was, now)
			}
			if other := after.App("tt02app"); other.Refreshes != 0 {
				t.Fatalf("another authorizer was refreshed: %+v", other)
			}
			// The next request uses the fresh token directly ({http.tptoken.replayed}
			// is set only by a replay, so the header shows the unknown placeholder).
			a = x.call("GET", x.apiPath(), appidHeader("tt01app"), "")
			if a.Status != 200 || a.Header.Get("X-Tptoken-Replayed") == "true" {
				t.Fatalf("next request: %+v replayed=%q", a, a.Header.Get("X-Tptoken-Replayed"))
			}
		})
	}
}

func TestBodyLargerThanMaxReplayBodyIsNotReplayed(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withHandler(`tptoken {
		max_replay_body 1KiB
	}`))
	x.authorize("tt01app")
	if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 {
		t.Fatalf("before the revocation: %+v", a)
	}
	x.emu.RevokeAccessToken("tt01app", tokensource.V1)
	before := x.emu.Stats().App("tt01app")
	large := strings.Repeat("x", 4<<10)
	a := x.call("POST", x.apiPath(), appidHeader("tt01app"), large)
	// The client gets the platform's own answer, as without tptoken.
	if a.Status != 200 || a.Errno != emulator.ErrnoAccessTokenInvalid || a.TPToken.Error != "" {
		t.Fatalf("large body: %+v", a)
	}
	mid := x.emu.Stats().App("tt01app")
	if mid.DownstreamInvalid-before.DownstreamInvalid != 1 || mid.DownstreamOK != before.DownstreamOK {
		t.Fatalf("the large request was replayed: %+v → %+v", before, mid)
	}
	// A request within the limit is replayed and heals the authorizer.
	small := `{"small":true}`
	a = x.call("POST", x.apiPath(), appidHeader("tt01app"), small)
	if a.Status != 200 || a.Errno != 0 || a.Data.BodySHA256 != sha256Hex(small) {
		t.Fatalf("small body after the revocation: %+v", a)
	}
	if s := x.emu.Stats().App("tt01app"); s.Refreshes-before.Refreshes != 1 {
		t.Fatalf("want one refresh: %+v → %+v", before, s)
	}
}

// A replay is the same request: method, query (order and escaping) and one
// access-token header, only the token changes.
func TestReplayedRequestKeepsItsQuery(t *testing.T) {
	x := newE2E(t, tokensource.V2, emulator.Lifetimes{})
	x.authorize("tt01app")
	x.emu.RevokeAccessToken("tt01app", tokensource.V2)
	q := url.Values{"b": {"2"}, "a": {"1 2"}}.Encode()
	a := x.call("POST", x.apiPath()+"?"+q, appidHeader("tt01app"), `{"n":1}`)
	if a.Status != 200 || a.Data.Query != q || a.Data.AccessTokenHeaders != 1 || a.Data.Method != "POST" {
		t.Fatalf("replayed request as the platform saw it: %+v", a.Data)
	}
}

// reverse_proxy retries a request on the next upstream after a dial error. The
// transport read the body before dialing; the retry must still carry all of it,
// small (kept for a replay) or large (streamed).
func TestProxyRetryAfterADialErrorSendsTheWholeBody(t *testing.T) {
	for _, body := range []string{`{"small":true}`, `{"large":"` + strings.Repeat("z", 4000) + `"}`} {
		dead := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withHandler(fmt.Sprintf(`route {
		tptoken {
			max_replay_body 1KiB
		}
		reverse_proxy %s {{emu}} {
			lb_policy first
			lb_retries 2
			fail_duration 30s
			transport tptoken
		}
	}`, dead)))
		x.authorize("tt01app")
		a := x.call("POST", x.apiPath(), appidHeader("tt01app"), body)
		sum := sha256.Sum256([]byte(body))
		if a.Status != 200 || a.Data.AppID != "tt01app" || a.Data.BodyLen != len(body) || a.Data.BodySHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("%d-byte body after a retry: status %d, upstream got %d bytes", len(body), a.Status, a.Data.BodyLen)
		}
		if !strings.Contains(x.debugLog(), "dial tcp "+dead) {
			t.Fatal("the first upstream was not tried: the test did not exercise a retry")
		}
		_ = stopCaddy()
	}
}
