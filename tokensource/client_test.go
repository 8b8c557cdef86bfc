package tokensource_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

func fakePlatform(t *testing.T, handler http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	return srv.URL
}

func newTestClient(t *testing.T, family tokensource.Family, url string) *tokensource.Client {
	t.Helper()
	c, err := tokensource.NewClient(tokensource.ClientConfig{Family: family, Endpoint: url, ComponentAppID: "tt0comp",
		ComponentSecret: "very-secret", Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClientParsesBothEnvelopesIntoOneTypedError(t *testing.T) {
	cases := []struct {
		name, body string
		status     int
		code       int
		class      tokensource.Class
	}{
		{"v1 errno", `{"errno":40021,"message":"authorizer_refresh_token 不正确或者已过期"}`, 200, 40021, tokensource.ClassRefreshTokenDead},
		{"v2 err_no", `{"err_no":40004,"err_msg":"找不到","log_id":"2026x","data":{}}`, 200, 40004, tokensource.ClassAuthorizationGone},
		{"v2 string code", `{"err_no":"40045","err_msg":"retry"}`, 200, 40045, tokensource.ClassRetryable},
		{"errno on HTTP 400", `{"errno":40010,"message":"bad component token"}`, 400, 40010, tokensource.ClassComponentToken},
		{"HTTP 502 text", `bad gateway`, 502, 0, tokensource.ClassRetryable},
		{"HTTP 404 text", `not found`, 404, 0, tokensource.ClassOther},
		{"not JSON", `<html>`, 200, 0, tokensource.ClassOther},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			url := fakePlatform(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			})
			_, err := newTestClient(t, tokensource.V1, url).Refresh(context.Background(), "ct", "rt")
			var pe *tokensource.PlatformError
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v, want *PlatformError", err)
			}
			if pe.Code != tc.code || pe.Op != tokensource.OpRefresh {
				t.Fatalf("code %d op %s, want %d refresh", pe.Code, pe.Op, tc.code)
			}
			if got := tokensource.Classify(err); got != tc.class {
				t.Fatalf("class %v, want %v", got, tc.class)
			}
		})
	}
}

func TestClientReadsV1BareAndV2WrappedAnswers(t *testing.T) {
	var gotHeader, gotQuery, gotPath string
	url := fakePlatform(t, func(w http.ResponseWriter, r *http.Request) {
		gotHeader, gotQuery, gotPath = r.Header.Get("access-token"), r.URL.RawQuery, r.URL.Path
		if strings.HasPrefix(r.URL.Path, "/api/") {
			_, _ = w.Write([]byte(`{"err_no":0,"err_msg":"","log_id":"x","data":{"authorizer_access_token":"isvact.a","expires_in":7200,"authorizer_refresh_token":"isvrft.b","refresh_expires_in":"2592000","authorizer_appid":"tt01","authorize_permission":[{"id":1,"category":"开发管理权限","description":"d"}]}}`))
			return
		}
		_, _ = w.Write([]byte(`{"authorizer_access_token":"0802a","expires_in":7200,"authorizer_refresh_token":"0740b","refresh_expires_in":2592000,"authorizer_appid":"tt01"}`))
	})
	g, err := newTestClient(t, tokensource.V2, url).ExchangeCode(context.Background(), "clt.ct", "code1")
	if err != nil {
		t.Fatal(err)
	}
	if g.AccessToken != "isvact.a" || g.RefreshToken != "isvrft.b" || g.ExpiresIn != 2*time.Hour || g.RefreshExpiresIn != 720*time.Hour || g.AppID != "tt01" || len(g.Permissions) != 1 {
		t.Fatalf("v2 grant = %+v", g)
	}
	if gotHeader != "clt.ct" || gotPath != "/api/tpapp/v2/auth/get_auth_token/" || !strings.Contains(gotQuery, "grant_type=app_to_tp_authorization_code") || strings.Contains(gotQuery, "component_access_token") {
		t.Fatalf("v2 request: header %q path %q query %q", gotHeader, gotPath, gotQuery)
	}
	g, err = newTestClient(t, tokensource.V1, url).Refresh(context.Background(), "ct1", "rt1")
	if err != nil {
		t.Fatal(err)
	}
	if g.AccessToken != "0802a" || gotPath != "/openapi/v1/oauth/token" || !strings.Contains(gotQuery, "grant_type=app_to_tp_refresh_token") ||
		!strings.Contains(gotQuery, "component_access_token=ct1") || !strings.Contains(gotQuery, "authorizer_refresh_token=rt1") {
		t.Fatalf("v1: grant %+v path %q query %q", g, gotPath, gotQuery)
	}
}

func TestClientErrorsNeverQuoteTheURL(t *testing.T) {
	// A server that hangs past the client timeout: the error comes from net/http,
	// whose *url.Error would quote the query with the secret and the ticket.
	url := fakePlatform(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	_, err := newTestClient(t, tokensource.V1, url).ComponentToken(context.Background(), "ticket-value")
	if err == nil {
		t.Fatal("expected a timeout")
	}
	if !tokensource.IsTimeout(err) || !tokensource.IsRetryable(err) {
		t.Fatalf("err = %v, want a retryable timeout", err)
	}
	for _, s := range []string{"very-secret", "ticket-value", "component_appsecret", "?"} {
		if strings.Contains(err.Error(), s) {
			t.Fatalf("error %q quotes %q", err, s)
		}
	}
}

func TestClientRejectsOversizedAnswers(t *testing.T) {
	url := fakePlatform(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"component_access_token":"`))
		_, _ = w.Write([]byte(strings.Repeat("a", 2<<20)))
		_, _ = w.Write([]byte(`","expires_in":7200}`))
	})
	_, err := newTestClient(t, tokensource.V1, url).ComponentToken(context.Background(), "t")
	if err == nil || !strings.Contains(err.Error(), "larger than 1 MiB") {
		t.Fatalf("err = %v", err)
	}
}

func TestNewClientValidatesItsConfiguration(t *testing.T) {
	cases := map[string]tokensource.ClientConfig{
		"family":   {Family: "v3", ComponentAppID: "tt1", ComponentSecret: "s"},
		"endpoint": {Endpoint: "open.douyin.com", ComponentAppID: "tt1", ComponentSecret: "s"},
		"appid":    {ComponentAppID: "tt/1", ComponentSecret: "s"},
		"secret":   {ComponentAppID: "tt1"},
	}
	for name, cfg := range cases {
		if _, err := tokensource.NewClient(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestClientRetrievesCodesAndListsAuthorizedAppsOfBothFamilies(t *testing.T) {
	for _, fam := range []tokensource.Family{tokensource.V1, tokensource.V2} {
		t.Run(string(fam), func(t *testing.T) {
			h := newHarness(t, fam)
			for _, id := range []string{"tt01list", "tt02list", "tt03list"} {
				if _, err := h.emu.Authorize(id, false); err != nil {
					t.Fatal(err)
				}
			}
			c, _ := tokensource.NewClient(tokensource.ClientConfig{Family: fam, Endpoint: h.srv.URL, ComponentAppID: testComponent, ComponentSecret: testSecret})
			ct, err := c.ComponentToken(context.Background(), tokensource.Secret(h.emu.Ticket()))
			if err != nil {
				t.Fatal(err)
			}
			apps, total, err := c.AuthorizedApps(context.Background(), ct.Token, 1, 2)
			if err != nil {
				t.Fatal(err)
			}
			if total != 3 || len(apps) != 2 || apps[0].AppID != "tt01list" || apps[0].AuthTime.IsZero() {
				t.Fatalf("page 1: total %d apps %+v", total, apps)
			}
			code, ttl, err := c.RetrieveCode(context.Background(), ct.Token, "tt02list")
			if err != nil || code == "" || ttl <= 0 {
				t.Fatalf("retrieve: %v (ttl %s)", err, ttl)
			}
			g, err := c.ExchangeCode(context.Background(), ct.Token, code)
			if err != nil || g.AppID != "tt02list" {
				t.Fatalf("exchange of the retrieved code: %v %+v", err, g.AppID)
			}
			_, _, err = c.RetrieveCode(context.Background(), ct.Token, "tt404")
			if !tokensource.NeedsReauthorization(err) {
				t.Fatalf("retrieve for an unknown authorizer: %v, want authorization gone", err)
			}
		})
	}
}
