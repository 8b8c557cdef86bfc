package emulator

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// linkCall calls pre_auth_code or gen_link of family f with the component token.
func (h *harness) linkCall(f tokensource.Family, comp, v1Path, v2Path string, body any) answer {
	h.t.Helper()
	b, _ := json.Marshal(body)
	if f == v1 {
		return h.do("POST", v1Path, url.Values{"component_appid": {tpAppID}, "component_access_token": {comp}}, nil, b)
	}
	return h.do("POST", v2Path, nil, http.Header{"Access-Token": {comp}, "Content-Type": {"application/json"}}, b)
}

func TestAuthorizationLinksAuthorizeOnceAndRedirectWithTheCode(t *testing.T) {
	for _, f := range []tokensource.Family{v1, v2} {
		t.Run(string(f), func(t *testing.T) {
			h := newHarness(t)
			comp := h.componentToken(f)
			a := h.linkCall(f, comp, PathV1PreAuthCode, PathV2PreAuthCode, map[string]any{"pre_auth_code_type": 1})
			pre := a.str("pre_auth_code")
			if a.code != 0 || pre == "" || a.data["expires_in"] == nil {
				t.Fatalf("pre_auth_code: %+v", a.raw)
			}
			if a := h.linkCall(f, comp, PathV1PreAuthCode, PathV2PreAuthCode, map[string]any{"pre_auth_code_type": 2}); a.code != 40059 {
				t.Fatalf("a 代创建 pre_auth_code without app_name: %+v", a.raw)
			}
			if a := h.linkCall(f, "not-a-token", PathV1PreAuthCode, PathV2PreAuthCode, nil); a.code != ErrnoComponentInvalid {
				t.Fatalf("pre_auth_code with a wrong component token: %+v", a.raw)
			}

			// The hand-built link: the redirect keeps the redirect_uri's own query.
			link := h.srv.URL + PathAuthorizationPage + "?" + url.Values{"component_appid": {tpAppID}, "pre_auth_code": {pre},
				"redirect_uri": {"https://tp.example.com/cb/ts1.x?keep=1"}}.Encode()
			to, err := h.e.FollowAuthLink(link, appA, false)
			if err != nil {
				t.Fatal(err)
			}
			u, _ := url.Parse(to)
			code := u.Query().Get("authorization_code")
			if u.Host != "tp.example.com" || u.Path != "/cb/ts1.x" || u.Query().Get("keep") != "1" || u.Query().Get("expires_in") != "3600" || code == "" {
				t.Fatalf("redirect to %q", to)
			}
			if a := h.exchange(f, comp, code); a.code != 0 || a.str("authorizer_appid") != appA {
				t.Fatalf("exchanging the redirect's code: %+v", a.raw)
			}
			if _, err := h.e.FollowAuthLink(link, appB, false); !errors.Is(err, ErrBadAuthLink) {
				t.Fatalf("a used link again: %v", err)
			}

			// gen_link, followed through the page as a browser would.
			a = h.linkCall(f, comp, PathV1GenLink, PathV2GenLink, map[string]any{"link_type": 1, "redirect_uri": "https://tp.example.com/"})
			if a.code != 0 || !strings.HasPrefix(a.str("link"), h.srv.URL+PathAuthorizationPage+"?") {
				t.Fatalf("gen_link: %+v", a.raw)
			}
			noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			resp, err := noFollow.Get(a.str("link") + "&emulator_appid=" + appB)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusFound || !strings.HasPrefix(loc, "https://tp.example.com/?authorization_code=") {
				t.Fatalf("the authorization page: %d %q", resp.StatusCode, loc)
			}
			if !h.e.Authorizers()[appB] {
				t.Fatalf("%s not authorized through the page", appB)
			}
			s := h.e.Stats()
			if s.Calls[OpPreAuthCode] != 3 || s.Calls[OpGenLink] != 1 {
				t.Fatalf("calls %v", s.Calls)
			}

			// An expired link.
			a = h.linkCall(f, comp, PathV1PreAuthCode, PathV2PreAuthCode, nil)
			h.clock.Advance(11 * time.Minute)
			link = h.srv.URL + PathAuthorizationPage + "?" + url.Values{"component_appid": {tpAppID}, "pre_auth_code": {a.str("pre_auth_code")}}.Encode()
			if _, err := h.e.FollowAuthLink(link, appB, false); !errors.Is(err, ErrBadAuthLink) {
				t.Fatalf("an expired link: %v", err)
			}
		})
	}
}
