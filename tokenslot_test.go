package tptoken

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

func TestTakeTokenSlotRemovesEveryCopyAndKeepsTheRestOfTheQuery(t *testing.T) {
	tests := []struct {
		name      string
		header    http.Header
		query     string
		value     string
		conflict  string
		restQuery string
	}{
		{"v2 SDK header", http.Header{"Access-Token": {"tt01app"}, "X-From": {"openapi-sdk"}}, "page=1&size=10", "tt01app", "", "page=1&size=10"},
		{"v1 query, order and escaping kept", nil, "b=%2F&authorizer_access_token=tt01app&a=x+y", "tt01app", "", "b=%2F&a=x+y"},
		{"the same value in every place", http.Header{"Access-Token": {"tt01app"}, "X-Token": {"tt01app"}, "Access_token": {"tt01app"}},
			"access_token=tt01app&component_access_token=tt01app&k=v", "tt01app", "", "k=v"},
		{"an escaped key is a slot too", nil, "access%5Ftoken=tt01app&k=v", "tt01app", "", "k=v"},
		{"a repeated header with one value", http.Header{"Access-Token": {"tt01app", " tt01app "}}, "", "tt01app", "", ""},
		{"empty values hold nothing", http.Header{"Access-Token": {""}, "X-Token": {"tt01app"}}, "access_token=", "tt01app", "", ""},
		{"no slot", http.Header{"X-Authorizer-Appid": {"tt01app"}}, "access_tokens=1&my_access_token=2", "", "", "access_tokens=1&my_access_token=2"},
		{"different values", http.Header{"Access-Token": {"tt01app"}, "X-Token": {"isvact.secret"}}, "access_token=tt02app",
			"", "header access-token, header x-token, query access_token", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/api/x?"+tt.query, nil)
			for k, v := range tt.header {
				r.Header[k] = v
			}
			value, conflict := takeTokenSlot(r)
			if value != tt.value || conflict != tt.conflict {
				t.Fatalf("got value %q conflict %q, want %q %q", value, conflict, tt.value, tt.conflict)
			}
			if r.URL.RawQuery != tt.restQuery || r.RequestURI != r.URL.RequestURI() {
				t.Fatalf("query left %q (RequestURI %q), want %q", r.URL.RawQuery, r.RequestURI, tt.restQuery)
			}
			for _, h := range tokenSlotHeaders {
				if _, ok := r.Header[h]; ok {
					t.Fatalf("header %s left on the request", h)
				}
			}
			if strings.Contains(tt.conflict, "x-token") && strings.Contains(conflict, "secret") {
				t.Fatal("the conflict names a value")
			}
		})
	}
}

// handlerFor is a handler of the family as Provision leaves it, without an
// engine: enough to answer failures.
func handlerFor(family tokensource.Family, errorResponse string) *Handler {
	return &Handler{
		ErrorResponse: errorResponse, platform: errorResponse == "platform",
		comp:   &component{appID: e2eComponent, family: family},
		logger: zap.NewNop(), noTransport: &rate.Sometimes{First: 1}, loopLog: &rate.Sometimes{First: 1},
	}
}

// With error_response platform a failure is HTTP 200 in the family's
// envelope, with every field the SDKs read and a code that neither says
// success nor "this token is invalid, renew it".
func TestPlatformFailuresAreHTTP200WithEveryFieldTheSDKsRead(t *testing.T) {
	failures := []struct {
		name       string
		err        error
		status     int
		errno      int
		kind       string
		retryAfter string
	}{
		{"bad appid", tokensource.CheckAppID("tt/x"), 400, 40001, "bad_appid", ""},
		{"not allowed", errNotAllowed("tt02app"), 403, 40008, "not_allowed", ""},
		{"unavailable", &tokensource.Error{Kind: tokensource.KindUnavailable, Msg: "no usable token", RetryAfter: 1500 * time.Millisecond}, 503, 40000, "unavailable", "2"},
		{"platform refused with a token code", &tokensource.Error{Kind: tokensource.KindPlatform, Msg: "component token",
			Err: &tokensource.PlatformError{Code: 40010, Message: "component_access_token 不正确"}}, 502, 40000, "platform_error", ""},
		{"platform refused", &tokensource.Error{Kind: tokensource.KindPlatform, Msg: "component token",
			Err: &tokensource.PlatformError{Code: 40038, Message: "无效的 secret"}}, 502, 40038, "platform_error", ""},
		{"loop", errLoop{host: "open.douyin.com"}, 508, 40000, "loop", ""},
		{"unreachable", errUnreachable{errors.New("dial tcp: connection refused")}, 502, 40000, "platform_unreachable", ""},
	}
	for _, family := range e2eFamilies {
		for _, mode := range []string{"envelope", "platform"} {
			for _, f := range failures {
				t.Run(string(family)+"/"+mode+"/"+f.name, func(t *testing.T) {
					h := handlerFor(family, mode)
					w := httptest.NewRecorder()
					if err := h.fail(w, httptest.NewRequest("GET", "/x", nil), nil, f.err); err != nil {
						t.Fatal(err)
					}
					want := f.status
					if mode == "platform" {
						want = http.StatusOK
					}
					if w.Code != want || w.Header().Get("Retry-After") != f.retryAfter {
						t.Fatalf("status %d Retry-After %q, want %d %q", w.Code, w.Header().Get("Retry-After"), want, f.retryAfter)
					}
					var body map[string]any
					if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
						t.Fatal(err)
					}
					code, msg := "errno", "message"
					if family == tokensource.V2 {
						code, msg = "err_no", "err_msg"
						if body["err_tips"] != body["err_msg"] || body["log_id"] == nil {
							t.Errorf("v2 envelope without err_tips or log_id: %s", w.Body)
						}
					}
					if n, ok := body[code].(float64); !ok || int(n) != f.errno || rejectsToken(int(n)) || n == 0 {
						t.Errorf("%s = %v, want the number %d", code, body[code], f.errno)
					}
					if m, _ := body[msg].(string); m == "" || m != clientMessage(f.err) {
						t.Errorf("%s = %q, want %q", msg, m, clientMessage(f.err))
					}
					detail, _ := body["tptoken"].(map[string]any)
					if detail["error"] != f.kind || detail["status"] != float64(f.status) {
						t.Errorf("tptoken = %v, want error %s status %d", detail, f.kind, f.status)
					}
				})
			}
		}
	}
}

// A loop is answered by the handler itself even with error_response
// handle_errors: a handler error makes Caddy log the request's headers, and a
// looped request carries a token.
func TestLoopIsAnsweredEvenInHandleErrorsMode(t *testing.T) {
	h := handlerFor(tokensource.V2, "handle_errors")
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/api/x", nil)
	r.Header.Set("Access-Token", "isvact.the-injected-token")
	r.Header["Via"] = hopValue
	if err := h.ServeHTTP(w, r, nil); err != nil {
		t.Fatalf("the loop was handed to Caddy's error handling: %v", err)
	}
	if w.Code != http.StatusLoopDetected || strings.Contains(w.Body.String(), "isvact") || !strings.Contains(w.Body.String(), "request loop") {
		t.Fatalf("got %d %s", w.Code, w.Body)
	}
}
