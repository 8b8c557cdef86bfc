package tptoken

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

var e2eFamilies = []tokensource.Family{tokensource.V1, tokensource.V2}

func TestPushedTicketAndAuthorizationInjectTheToken(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			x := newE2E(t, fam, emulator.Lifetimes{})
			x.authorize("tt01app")
			a := x.call("GET", x.apiPath()+"?b=2&a=1", appidHeader("tt01app"), "")
			if a.Status != 200 || a.Errno != 0 || a.Data.AppID != "tt01app" || a.Data.Family != string(fam) {
				t.Fatalf("answer = %+v", a)
			}
			if s := x.emu.Stats().App("tt01app"); s.Exchanges != 1 || s.DownstreamOK != 1 {
				t.Fatalf("stats = %+v", s)
			}
		})
	}
}

func TestCarrierRemovedClientTokenReplacedAndQueryOrderKept(t *testing.T) {
	t.Run("v1", func(t *testing.T) {
		x := newE2E(t, tokensource.V1, emulator.Lifetimes{})
		x.authorize("tt01app")
		q := "?z=9&authorizer_access_token=client-stale&a=%2Fx+y&component_appid=tt-evil&flag&b=1"
		a := x.call("GET", x.apiPath()+q, appidHeader("tt01app"), "")
		if a.Status != 200 || a.Errno != 0 {
			t.Fatalf("answer = %+v", a)
		}
		want := "z=9&a=%2Fx+y&flag&b=1&component_appid=" + e2eComponent + "&authorizer_access_token=***"
		if a.Data.Query != want {
			t.Fatalf("upstream query\n got %q\nwant %q", a.Data.Query, want)
		}
		if got := x.tap.lastRequest().Header.Get("X-Authorizer-Appid"); got != "" {
			t.Fatalf("the appid carrier reached the upstream: %q", got)
		}
	})
	t.Run("v2", func(t *testing.T) {
		x := newE2E(t, tokensource.V2, emulator.Lifetimes{})
		x.authorize("tt01app")
		h := appidHeader("tt01app")
		h.Set("Access-Token", "client-stale-token")
		a := x.call("GET", x.apiPath()+"?z=9&a=%2Fx+y", h, "")
		if a.Status != 200 || a.Errno != 0 || a.Data.AppID != "tt01app" {
			t.Fatalf("answer = %+v", a)
		}
		if a.Data.AccessTokenHeaders != 1 || a.Data.Query != "z=9&a=%2Fx+y" {
			t.Fatalf("upstream saw %d access-token headers and query %q", a.Data.AccessTokenHeaders, a.Data.Query)
		}
		if got := x.tap.lastRequest().Header.Get("X-Authorizer-Appid"); got != "" {
			t.Fatalf("the appid carrier reached the upstream: %q", got)
		}
	})
}

func TestAppidFromQueryAndPathCarriers(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withHandler(`route /q/* {
		uri strip_prefix /q
		tptoken {
			appid query appid
		}
	}
	route /p/* {
		uri strip_prefix /p
		tptoken {
			appid path
		}
	}
	route /h/* {
		uri strip_prefix /h
		tptoken {
			appid {http.request.header.X-Tenant}
		}
	}`))
	x.authorize("tt01app")
	a := x.call("GET", "/q"+x.apiPath()+"?x=1&appid=tt01app&y=2", nil, "")
	if a.Errno != 0 || a.Data.AppID != "tt01app" || !strings.HasPrefix(a.Data.Query, "x=1&y=2&") {
		t.Fatalf("query carrier: %+v", a)
	}
	a = x.call("GET", "/p/tt01app"+x.apiPath()+"?x=1", nil, "")
	if a.Errno != 0 || a.Data.AppID != "tt01app" || a.Data.Path != x.apiPath() {
		t.Fatalf("path carrier: %+v", a)
	}
	a = x.call("GET", "/h"+x.apiPath(), http.Header{"X-Tenant": {"tt01app"}}, "")
	if a.Errno != 0 || a.Data.AppID != "tt01app" {
		t.Fatalf("placeholder carrier: %+v", a)
	}
}

func TestEveryRequestCarriesItsOwnAppidsTokenUnderConcurrency(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{})
	var ids []string
	for i := range 20 {
		ids = append(ids, fmt.Sprintf("tt%02dapp", i))
	}
	x.authorize(ids...)
	const n = 2000
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := range n {
		id := ids[i%len(ids)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := x.tryCall("GET", x.apiPath()+fmt.Sprintf("?i=%d", i), appidHeader(id), "")
			switch {
			case err != nil:
				errs <- err.Error()
			case a.Status != 200 || a.Errno != 0:
				errs <- fmt.Sprintf("%s: status %d errno %d %s", id, a.Status, a.Errno, a.Message)
			case a.Data.AppID != id:
				errs <- fmt.Sprintf("request for %s carried the token of %s", id, a.Data.AppID)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if s := x.emu.Stats().Total; s.DownstreamOK != n || s.DownstreamForeign != 0 || s.DownstreamInvalid != 0 {
		t.Fatalf("emulator counts = %+v", s)
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

func TestRestartOnTheSameStorageNeedsNoReauthorization(t *testing.T) {
	x := newE2E(t, tokensource.V2, emulator.Lifetimes{})
	x.authorize("tt01app")
	if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 {
		t.Fatalf("before restart: %+v", a)
	}
	if err := stopCaddy(); err != nil {
		t.Fatal(err)
	}
	x.start()
	a := x.call("GET", x.apiPath(), appidHeader("tt01app"), "")
	if a.Status != 200 || a.Data.AppID != "tt01app" {
		t.Fatalf("after restart: %+v", a)
	}
	if s := x.emu.Stats().App("tt01app"); s.Exchanges != 1 || s.Retrieves != 0 {
		t.Fatalf("restart needed a new authorization: %+v", s)
	}
}

func TestConfigReloadUnderLoadNeitherRefreshesTwiceNorFails(t *testing.T) {
	// Access tokens live 6 s, so they rotate during the test while configs reload.
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{AccessTokenTTL: 6 * time.Second}, withGlobal("refresh_ahead 2s"))
	ids := []string{"tt01app", "tt02app", "tt03app"}
	x.authorize(ids...)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	var served, redials int
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := ids[(w+i)%len(ids)]
				a, err := x.tryCall("GET", x.apiPath(), appidHeader(id), "")
				if isConnectionReset(err) {
					// Caddy's listener handoff on reload, or the old server
					// closing an idle keep-alive connection, can reset a
					// connection before any handler runs; a client retries.
					// Counted and reported, not hidden.
					mu.Lock()
					redials++
					mu.Unlock()
					a, err = x.tryCall("GET", x.apiPath(), appidHeader(id), "")
				}
				mu.Lock()
				served++
				switch {
				case err != nil:
					failures = append(failures, err.Error())
				case a.Status != 200 || a.Errno != 0 || a.Data.AppID != id:
					failures = append(failures, fmt.Sprintf("%s: %d %d %s", id, a.Status, a.Errno, a.Message))
				}
				mu.Unlock()
			}
		}()
	}
	deadline := time.Now().Add(14 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		x.site = fmt.Sprintf("header X-Reload %d", i) // a real config change each time
		x.start()
		time.Sleep(700 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d requests failed during reloads, first: %s", len(failures), served, failures[0])
	}
	total := x.emu.Stats().Total
	if total.Refresh40021 != 0 {
		t.Fatalf("a refresh token was used twice across reloads: %+v", total)
	}
	if total.Refreshes == 0 {
		t.Fatal("no rotation happened during the test")
	}
	// 14 s at one rotation per authorizer every ~4 s: a second refresher would double it.
	if max := int64(len(ids) * 5); total.Refreshes > max {
		t.Fatalf("%d refreshes for %d authorizers in 14 s: more than one refresher", total.Refreshes, len(ids))
	}
	t.Logf("%d requests served across reloads, %d refreshes, %d connections reset by the reload (retried)", served, total.Refreshes, redials)
}

func TestDebugLogAndAdaptedJSONHoldNoSecret(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			x := newE2E(t, fam, emulator.Lifetimes{AccessTokenTTL: 4 * time.Second}, withGlobal("refresh_ahead 1s"))
			x.authorize("tt01app")
			for range 5 {
				if a := x.call("POST", x.apiPath()+"?k=v", appidHeader("tt01app"), `{"x":1}`); a.Status != 200 {
					t.Fatalf("answer = %+v", a)
				}
			}
			x.emu.RevokeAccessToken("tt01app", fam) // a replay, logged at info
			time.Sleep(4 * time.Second)             // a rotation
			if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 {
				t.Fatalf("answer = %+v", a)
			}
			log := x.debugLog()
			if !strings.Contains(log, "upstream roundtrip") {
				t.Fatal("the debug log lacks reverse_proxy's upstream roundtrip lines: the check would prove nothing")
			}
			x.assertNoSecretIn("the DEBUG log", log)
			cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(x.caddyCfg), nil)
			if err != nil {
				t.Fatal(err)
			}
			x.assertNoSecretIn("the adapted JSON", string(cfg))
			if !strings.Contains(string(cfg), "{env.TPT_SECRET}") {
				t.Fatal("the adapted JSON lost the secret placeholder")
			}
		})
	}
}
