package tptoken

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// Requests the handler cannot serve, through a real Caddy: the family's
// envelope, handle_errors and its placeholders, 503 with Retry-After.

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

func TestRequestsThatCannotBeServedGetTheFamilysEnvelope(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			x := newE2E(t, fam, emulator.Lifetimes{}, withHandler(`tptoken {
		allow tt01app tt02app tt404
	}`))
			x.authorize("tt01app", "tt02app")
			calls := x.emu.Stats().Calls
			cases := []struct {
				name   string
				appid  string
				status int
				errno  int
				kind   string
				says   string
			}{
				{"missing", "", 400, 40001, "bad_appid", "X-Authorizer-Appid"},
				{"malformed", "tt/../x", 400, 40001, "bad_appid", "invalid appid"},
				{"not allowed", "tt03app", 403, 40008, "not_allowed", "allow list"},
				{"unknown", "tt404", 403, 40022, "unknown_authorizer", "authorize"},
			}
			for _, tc := range cases {
				h := http.Header{}
				if tc.appid != "" {
					h = appidHeader(tc.appid)
				}
				a := x.call("GET", x.apiPath(), h, "")
				if a.Status != tc.status || a.Errno != tc.errno || a.TPToken.Error != tc.kind || !strings.Contains(a.Message, tc.says) {
					t.Errorf("%s: got status %d errno %d kind %q message %q", tc.name, a.Status, a.Errno, a.TPToken.Error, a.Message)
				}
				if fam == tokensource.V2 && !strings.Contains(a.Raw, `"log_id"`) {
					t.Errorf("%s: v2 envelope without log_id: %s", tc.name, a.Raw)
				}
			}
			if after := x.emu.Stats().Calls; after["downstream"] != calls["downstream"] {
				t.Fatal("a request that could not be served reached the upstream")
			}
			// Authorization gone: the UNAUTHORIZED push revokes at once.
			if err := x.emu.Unauthorize("tt02app", true); err != nil {
				t.Fatal(err)
			}
			a := x.call("GET", x.apiPath(), appidHeader("tt02app"), "")
			if a.Status != 403 || a.Errno != 40022 || a.TPToken.Error != "unauthorized" {
				t.Fatalf("after UNAUTHORIZED: %+v", a)
			}
			if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 {
				t.Fatalf("another authorizer stopped working: %+v", a)
			}
		})
	}
}
