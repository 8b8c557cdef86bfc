package tptoken

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// The tptoken handler through a real Caddy (the harness in
// e2e_helpers_test.go): the token injected for the appid of each request,
// taken from its carrier, which is removed.

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

func TestStripFirstSegment(t *testing.T) {
	tests := []struct {
		name, in              string
		appid                 string
		ok                    bool
		path, raw, requestURI string
	}{
		{"appid and API path", "/tt01/openapi/v1/x?a=1", "tt01", true, "/openapi/v1/x", "", "/openapi/v1/x?a=1"},
		{"appid alone becomes root", "/tt01", "tt01", true, "/", "", "/"},
		{"appid with trailing slash becomes root", "/tt01/", "tt01", true, "/", "", "/"},
		{"root has no appid", "/", "", false, "/", "", "/"},
		{"empty first segment has no appid", "//openapi/v1", "", false, "//openapi/v1", "", "//openapi/v1"},
		{"escaped slash in the rest kept", "/tt01/a%2Fb/c", "tt01", true, "/a/b/c", "/a%2Fb/c", "/a%2Fb/c"},
		{"non-canonical escape in the rest kept", "/tt01/%7Euser", "tt01", true, "/~user", "/%7Euser", "/%7Euser"},
		{"canonical escape in the rest", "/tt01/a%20b", "tt01", true, "/a b", "", "/a%20b"},
		{"escaped appid unescaped, plain rest", "/tt%30/x", "tt0", true, "/x", "", "/x"},
		{"escaped appid and escaped rest", "/tt%4101/x%2Fy", "ttA01", true, "/x/y", "/x%2Fy", "/x%2Fy"},
		{"escaped slash stays in the appid segment", "/tt%2F01/openapi", "tt/01", true, "/openapi", "", "/openapi"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := url.ParseRequestURI(tt.in) // as net/http parses a request target
			if err != nil {
				t.Fatal(err)
			}
			appid, ok := stripFirstSegment(u)
			if appid != tt.appid || ok != tt.ok {
				t.Errorf("appid = (%q, %v), want (%q, %v)", appid, ok, tt.appid, tt.ok)
			}
			if u.Path != tt.path || u.RawPath != tt.raw || u.RequestURI() != tt.requestURI {
				t.Errorf("path %q raw %q request URI %q, want %q %q %q",
					u.Path, u.RawPath, u.RequestURI(), tt.path, tt.raw, tt.requestURI)
			}
		})
	}
}
