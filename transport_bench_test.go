package tptoken

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// stubUpstream answers every request at once with the small JSON success
// answer of scripts/bench-load.sh's upstream, without a network.
type stubUpstream struct{ body []byte }

func (s stubUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(bytes.NewReader(s.body)),
		ContentLength: int64(len(s.body)), Request: r}, nil
}

// BenchmarkTransportRoundTrip is what the tptoken transport adds to Caddy's
// HTTP transport per request: the outgoing copy with the token injected, the
// buffering of a request body for a replay, and the inspection of a small JSON
// answer. The upstream is a stub behind a real *http.Transport (a registered
// scheme), so the network is left out and the "plain" case is the baseline.
// The tptoken cases include the handler's allocation of the injection.
func BenchmarkTransportRoundTrip(b *testing.B) {
	answer := []byte(`{"errno":0,"message":"success","data":{"appid":"tt0000bench01","name":"bench","status":1,"ts":1764057600}}`)
	ht := &http.Transport{}
	ht.RegisterProtocol("stub", stubUpstream{answer})
	post := bytes.Repeat([]byte("x"), 1024)
	tok := tokensource.Token{Value: tokensource.Secret(strings.Repeat("0801121846735a4a", 4)), AppID: "tt01bench", Family: tokensource.V1}
	jsonPost := []byte(`{"path":"pages/index","width":430,"data":"` + strings.Repeat("x", 990) + `"}`)
	appTok := &appToken{appID: e2eApp, kind: tokensource.ClientToken}
	for _, bc := range []struct {
		name   string
		plain  bool
		replay int64 // max_replay_body; -1: off
		body   []byte
		app    *appTarget // an app token route
	}{
		{"plain_http_transport", true, 0, nil, nil},
		{"tptoken_replay_off", false, -1, nil, nil},
		{"tptoken_replay_on", false, defaultMaxReplayBody, nil, nil},
		{"plain_http_transport_post_1KiB", true, 0, post, nil},
		{"tptoken_replay_on_post_1KiB", false, defaultMaxReplayBody, post, nil},
		{"tptoken_app_header", false, defaultMaxReplayBody, nil, &appTarget{appToken: appTok, place: newPlacement(nil)}},
		{"tptoken_app_query", false, defaultMaxReplayBody, nil, &appTarget{appToken: appTok, place: newPlacement(&InjectPlace{In: injectQuery, Name: "access_token"})}},
		{"tptoken_app_body_post_1KiB", false, defaultMaxReplayBody, jsonPost, &appTarget{appToken: appTok, place: newPlacement(&InjectPlace{In: injectBody, Name: "access_token"})}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var rt http.RoundTripper = &reverseproxy.HTTPTransport{Transport: ht}
			if !bc.plain {
				rt = &Transport{HTTPTransport: reverseproxy.HTTPTransport{Transport: ht}, logger: zap.NewNop()}
			}
			req := httptest.NewRequest(http.MethodGet, "stub://upstream/openapi/v1/microapp/app/info?page=1&page_size=20", nil)
			req.RequestURI = ""
			vars := map[string]any{}
			req = req.WithContext(context.WithValue(req.Context(), caddyhttp.VarsCtxKey, vars))
			var rd bytes.Reader
			var inj *injection
			comp := &component{appID: e2eComponent, family: tokensource.V1}
			b.ReportAllocs()
			for b.Loop() {
				// Each request has a new injection, allocated by the handler (also
				// counted in BenchmarkHandlerCachedToken).
				if !bc.plain {
					inj = &injection{comp: comp, appid: "tt01bench", tok: tok, maxReplayBody: bc.replay}
					if bc.app != nil {
						inj.comp, inj.app = nil, bc.app
					}
					vars[injectionVar] = inj
				}
				if bc.body != nil {
					rd.Reset(bc.body)
					req.Body, req.ContentLength = io.NopCloser(&rd), int64(len(bc.body))
				}
				resp, err := rt.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body) // what reverse_proxy does with it
				_ = resp.Body.Close()
				if inj != nil {
					inj.release() // as the handler does when the request ends
				}
			}
		})
	}
}

// BenchmarkTakeQueryParam is the `appid query <name>` carrier: reading the
// appid and removing it from the query, byte for byte.
func BenchmarkTakeQueryParam(b *testing.B) {
	for _, bc := range []struct{ name, raw string }{
		{"absent", "page=1&page_size=20&status=1"},
		{"present", "page=1&appid=tt0123456789abcdef&page_size=20"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _, _ = takeQueryParam(bc.raw, "appid")
			}
		})
	}
}

// BenchmarkRedactHeader is what cleaning the token out of an answer's headers
// costs when they do not hold it (every answer): a typical platform answer's
// headers, and a redirect whose Location has an escaped query.
func BenchmarkRedactHeader(b *testing.B) {
	tok := strings.Repeat("0801121846735a4a", 4)
	for _, bc := range []struct {
		name string
		h    http.Header
	}{
		{"typical_answer", http.Header{"Content-Type": {"application/json; charset=utf-8"}, "Content-Length": {"118"},
			"Date": {"Wed, 25 Nov 2026 08:00:00 GMT"}, "Server": {"Tengine"}, "X-Tt-Logid": {"20261125080000010203040506070809"},
			"Vary": {"Accept-Encoding"}}},
		{"redirect_escaped_query", http.Header{"Location": {"/openapi/v1/microapp/app/info/?name=%E6%B5%8B%E8%AF%95&page=1&page_size=20&tag=a%2Fb"},
			"Content-Type": {"text/html; charset=utf-8"}, "Date": {"Wed, 25 Nov 2026 08:00:00 GMT"}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if redactHeader(bc.h, tok) != nil {
					b.Fatal("a header changed")
				}
			}
		})
	}
}

// BenchmarkInspect is the cost of looking for an invalid-token code in the
// upstream's answer: paid only for small JSON answers.
func BenchmarkInspect(b *testing.B) {
	small := []byte(`{"errno":0,"message":"success","data":{"appid":"tt01bench","name":"demo"}}`)
	cases := []struct {
		name   string
		ctype  string
		body   []byte
		length int64
	}{
		{"small_json", "application/json", small, int64(len(small))},
		{"small_json_unknown_length", "application/json", small, -1},
		{"large_json", "application/json", bytes.Repeat([]byte("x"), 1<<20), 1 << 20},
		{"not_json", "image/png", small, int64(len(small))},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			rd := bytes.NewReader(tc.body)
			resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {tc.ctype}}, ContentLength: tc.length}
			b.ReportAllocs()
			for b.Loop() {
				rd.Reset(tc.body)
				resp.Body = io.NopCloser(rd)
				if code, _ := inspect(resp, tokensource.V1, false); code != 0 {
					b.Fatal("a success answer looked like an invalid token")
				}
			}
		})
	}
}

// BenchmarkInspectApp is BenchmarkInspect's small JSON answer on an app
// token route (its kind's codes, in every place they may be).
func BenchmarkInspectApp(b *testing.B) {
	small := []byte(`{"err_no":0,"err_msg":"","data":{"appid":"tt01bench","name":"demo"},"extra":{"logid":"20261125"}}`)
	for _, kind := range []string{tokensource.ClientToken, tokensource.AppAccessToken} {
		b.Run(kind, func(b *testing.B) {
			inj := &injection{app: &appTarget{appToken: &appToken{kind: kind}}}
			rd := bytes.NewReader(small)
			resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}}, ContentLength: int64(len(small))}
			b.ReportAllocs()
			for b.Loop() {
				rd.Reset(small)
				resp.Body = io.NopCloser(rd)
				if code, _ := inj.rejection(resp); code != 0 {
					b.Fatal("a success answer looked like an invalid token")
				}
			}
		})
	}
}
