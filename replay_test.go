package tptoken

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// The replay: a request whose token the platform rejects is sent once more,
// with a fresh token and the identical body, through a real Caddy (the harness
// in e2e_helpers_test.go).

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
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
