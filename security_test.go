package tptoken

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// End-to-end tests of what a hostile client, or a careless upstream, can make
// tptoken do. The upstream behind Caddy (the tap of e2e_helpers_test.go)
// routes paths under hostileUpstreamPrefix here instead of to the emulator.

// escapeEveryByte percent-escapes every byte of s with format (%%%02X or %%%02x).
func escapeEveryByte(s, format string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, format, s[i])
	}
	return b.String()
}

// tokenForms are the ways a token may be written into a header or a log line.
func tokenForms(tok string) []string {
	return []string{tok, url.QueryEscape(tok), url.PathEscape(tok), escapeEveryByte(tok, "%%%02X"),
		escapeEveryByte(tok, "%%%02x"), url.QueryEscape(escapeEveryByte(tok, "%%%02X"))}
}

// assertNoTokenIn fails if text holds any token the emulator issued, in any
// of its forms.
func (x *e2e) assertNoTokenIn(what, text string) {
	x.t.Helper()
	for _, s := range x.emu.IssuedSecrets() {
		for _, f := range tokenForms(s) {
			if len(s) >= 6 && strings.Contains(text, f) {
				i := strings.Index(text, f)
				x.t.Fatalf("%s holds a token (%d chars, written as %d) near: %q", what, len(s), len(f), text[max(0, i-200):i])
			}
		}
	}
}

// steered is the body an attacker makes the upstream answer: the family's own
// rejection code in the family's own field.
func steered(fam tokensource.Family, component bool) string {
	switch {
	case fam == tokensource.V1 && component:
		return `{"errno":40010,"message":"steered"}`
	case fam == tokensource.V1:
		return `{"errno":40020,"message":"steered"}`
	}
	return `{"err_no":28001003,"err_msg":"steered","log_id":"1"}`
}

// crossFamily is a rejection in the other family's field, with its code.
func crossFamily(fam tokensource.Family) string {
	if fam == tokensource.V1 {
		return `{"err_no":28001003,"err_msg":"steered","log_id":"1"}`
	}
	return `{"errno":40020,"message":"steered"}`
}

// flood sends n requests for appid (none: no appid header) whose answer the
// client steers to body, from 4 workers, while one worker sends normal
// requests for appid until the flood ends. It returns the normal requests that
// failed.
func (x *e2e) flood(n int, path, appid, body string) (normal int, failed []string) {
	x.t.Helper()
	target := path + "?body=" + url.QueryEscape(body)
	h := http.Header{}
	if appid != "" {
		h = appidHeader(appid)
	}
	jobs := make(chan struct{}, n)
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range 4 {
		wg.Go(func() {
			for range jobs {
				if _, err := x.tryCall("GET", target, h, ""); err != nil {
					mu.Lock()
					failed = append(failed, "attack request: "+err.Error())
					mu.Unlock()
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for {
		select {
		case <-done:
			return normal, failed
		default:
		}
		if appid == "" {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		a, err := x.tryCall("GET", x.apiPath(), appidHeader(appid), "")
		normal++
		if err != nil || a.Status != 200 || a.Errno != 0 || a.Data.AppID != appid {
			mu.Lock()
			failed = append(failed, fmt.Sprintf("normal request %d: status %d errno %d %s (%v)", normal, a.Status, a.Errno, a.Message, err))
			mu.Unlock()
		}
	}
}

// A client that steers an upstream's answer into "token invalid" must not make
// tptoken refresh (single-use refresh tokens) once per request, nor, when the
// platform refuses refreshes, make a valid token unusable.
func TestSteeredRejectionsCannotForceRefreshLoops(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			x := newE2E(t, fam, emulator.Lifetimes{}, withHandler(`route `+hostileUpstreamPrefix+`component/* {
		tptoken {
			token component
		}
		reverse_proxy {{emu}} {
			transport tptoken
		}
	}
	tptoken`))
			x.authorize("tt01app", "tt02app")
			steer, steerComponent := hostileUpstreamPrefix+"steer", hostileUpstreamPrefix+"component/steer"

			// The family's own rejection, 300 times: one refresh, then the
			// breaker; normal requests are served throughout.
			before := x.emu.Stats()
			normal, failed := x.flood(300, steer, "tt01app", steered(fam, false))
			refreshes := x.emu.Stats().App("tt01app").Refreshes - before.App("tt01app").Refreshes
			t.Logf("300 steered rejections: %d refreshes; %d normal requests, %d failed", refreshes, normal, len(failed))
			if len(failed) > 0 {
				t.Fatalf("%d requests failed, first: %s", len(failed), failed[0])
			}
			if refreshes > 2 {
				t.Fatalf("300 steered rejections caused %d refreshes, want at most 2", refreshes)
			}

			// The other family's field and code: nothing at all.
			before = x.emu.Stats()
			_, failed = x.flood(100, steer, "tt02app", crossFamily(fam))
			if n := x.emu.Stats().App("tt02app").Refreshes - before.App("tt02app").Refreshes; n != 0 || len(failed) > 0 {
				t.Fatalf("100 rejections in the other family's field caused %d refreshes (%d failed requests)", n, len(failed))
			}

			// A token component route: the component token is fetched again at
			// most twice.
			before = x.emu.Stats()
			_, failed = x.flood(100, steerComponent, "", steered(fam, true))
			fetches := x.emu.Stats().Total.ComponentTokenFetches - before.Total.ComponentTokenFetches
			t.Logf("100 steered component-token rejections: %d component token fetches", fetches)
			if fetches > 2 || len(failed) > 0 {
				t.Fatalf("100 steered component-token rejections caused %d fetches (%d failed requests)", fetches, len(failed))
			}

			// The platform refuses refreshes (40045): the rejected token, valid
			// in fact, keeps serving normal requests.
			if err := x.emu.SetFaults(emulator.OpRefresh, emulator.Faults{Errno40045: 100000}); err != nil {
				t.Fatal(err)
			}
			before = x.emu.Stats()
			normal, failed = x.flood(100, steer, "tt02app", steered(fam, false))
			calls := x.emu.Stats().Calls[emulator.OpRefresh] - before.Calls[emulator.OpRefresh]
			t.Logf("refreshes failing, 100 steered rejections: %d refresh calls; %d normal requests, %d failed", calls, normal, len(failed))
			if len(failed) > 0 {
				t.Fatalf("with refreshes failing, %d of %d normal requests failed, first: %s", len(failed), normal, failed[0])
			}
			if calls > 3 {
				t.Fatalf("with refreshes failing, 100 steered rejections made %d refresh calls, want one renewal (at most 3 attempts)", calls)
			}
			x.emu.ClearFaults()
			if a := x.call("GET", x.apiPath(), appidHeader("tt02app"), ""); a.Status != 200 || a.Errno != 0 {
				t.Fatalf("after the attack: %+v", a)
			}
			if !strings.Contains(x.debugLog(), "not about the token") {
				t.Fatal("the breaker trip was not logged")
			}
			x.assertNoTokenIn("debug log", x.debugLog())
		})
	}
}

// The other family's credential carriers never reach the upstream: a client
// cannot slip a token of its own past the injection.
func TestTheOtherFamilysCredentialsAreStripped(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			x := newE2E(t, fam, emulator.Lifetimes{})
			x.authorize("tt01app")
			h := appidHeader("tt01app")
			h.Set("Access-Token", "client-token")
			q := "?a=1&authorizer_access_token=client-token&component_access_token=client-token&component_appid=client-tp&b=2"
			if a := x.call("GET", x.apiPath()+q, h, ""); a.Status != 200 || a.Errno != 0 {
				t.Fatalf("answer: %+v", a)
			}
			up := x.tap.lastRequest()
			if up.Header.Get("Access-Token") == "client-token" || strings.Contains(up.URL.RawQuery, "client-") {
				t.Fatalf("a client credential reached the upstream: header %v, query has it: %v",
					up.Header.Get("Access-Token") == "client-token", strings.Contains(up.URL.RawQuery, "client-"))
			}
			if fam == tokensource.V1 && up.Header.Get("Access-Token") != "" {
				t.Fatal("a v1 route forwarded an access-token header")
			}
			if fam == tokensource.V2 && (up.URL.RawQuery != "a=1&b=2" || len(up.Header.Values("Access-Token")) != 1) {
				t.Fatalf("v2 upstream query %q, %d access-token headers", up.URL.RawQuery, len(up.Header.Values("Access-Token")))
			}
		})
	}
}

// An upstream that redirects keeping the query, or echoes the token into any
// header, never hands the token to the client, to reverse_proxy's debug log or
// to the access log; a redirect stays usable without it.
func TestUpstreamRedirectsAndEchoesNeverHandTheTokenBack(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			accessLog := filepath.Join(t.TempDir(), "access.log")
			x := newE2E(t, fam, emulator.Lifetimes{}, withSite(fmt.Sprintf(`log {
		output file %s
	}`, accessLog)))
			x.authorize("tt01app")
			var hints []http.Header
			var hintsMu sync.Mutex
			trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				hintsMu.Lock()
				hints = append(hints, http.Header(h).Clone())
				hintsMu.Unlock()
				return nil
			}}
			client := &http.Client{Timeout: 20 * time.Second,
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			get := func(path string) (*http.Response, string) {
				t.Helper()
				req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", x.proxy+path, nil)
				req.Header = appidHeader("tt01app")
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp, string(b)
			}
			headersOf := func(what string, h http.Header) {
				t.Helper()
				var sb strings.Builder
				for k, vs := range h {
					sb.WriteString(k + ": " + strings.Join(vs, ", ") + "\n")
				}
				x.assertNoTokenIn(what, sb.String())
			}

			// A ServeMux directory redirect keeps the query.
			resp, _ := get(hostileUpstreamPrefix + "dir?a=1&b=%2F")
			headersOf("the redirect's headers", resp.Header)
			if want := hostileUpstreamPrefix + "dir/?a=1&b=%2F"; resp.StatusCode/100 != 3 || resp.Header.Get("Location") != want {
				t.Fatalf("redirect: %d Location %q, want a redirect to %q", resp.StatusCode, resp.Header.Get("Location"), want)
			}
			// Following it goes through tptoken again.
			if resp, body := get(resp.Header.Get("Location")); resp.StatusCode != 200 || !strings.Contains(body, `"dir":true`) {
				t.Fatalf("following the redirect: %d %s", resp.StatusCode, body)
			}

			// An upstream echoing the token everywhere, raw and escaped.
			resp, _ = get(hostileUpstreamPrefix + "reflect")
			if v, _ := reflected.Load().(string); v == "" {
				t.Fatal("the upstream received no token: the test checks nothing")
			}
			headersOf("the answer's headers", resp.Header)
			headersOf("the answer's trailers", resp.Trailer)
			hintsMu.Lock()
			if len(hints) == 0 {
				t.Fatal("no 103 Early Hints reached the client: the test checks nothing")
			}
			for _, h := range hints {
				headersOf("a 103 Early Hints", h)
			}
			hintsMu.Unlock()
			if want := hostileUpstreamPrefix + "landing?x=1#top"; resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != want {
				t.Fatalf("echoing redirect: %d Location %q, want 302 %q", resp.StatusCode, resp.Header.Get("Location"), want)
			}

			// Nor in any log line: Caddy's debug log (reverse_proxy's "upstream
			// roundtrip" with the upstream's headers) and the access log.
			x.assertNoTokenIn("debug log", x.debugLog())
			b, err := os.ReadFile(accessLog)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), `"resp_headers"`) || !strings.Contains(string(b), "dir/?a=1") {
				t.Fatal("the access log did not record the answers' headers: the test checks nothing")
			}
			x.assertNoTokenIn("access log", string(b))
			if !strings.Contains(x.debugLog(), "upstream roundtrip") {
				t.Fatal("the debug log has no upstream roundtrip line: the test checks nothing")
			}
		})
	}
}
