package tptoken

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

// benchHandler is a provisioned-by-hand tptoken handler whose engine holds a
// fresh token for tt01bench: the cached path a request takes.
func benchHandler(b *testing.B, family tokensource.Family) *Handler {
	b.Helper()
	emu, err := emulator.New(emulator.Config{ComponentAppID: e2eComponent, ComponentAppSecret: e2eSecret})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(emu)
	b.Cleanup(srv.Close)
	e, err := tokensource.New(tokensource.Config{ComponentAppID: e2eComponent, ComponentSecret: e2eSecret,
		Family: family, Endpoint: srv.URL, Store: &certmagic.FileStorage{Path: b.TempDir()}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = e.Close() })
	ctx := context.Background()
	ticket := &push.Message{Kind: push.Ticket, Ticket: tokensource.Secret(emu.Ticket()), Timestamp: time.Now(), ID: "bench"}
	if _, err := e.HandlePush(ctx, ticket); err != nil {
		b.Fatal(err)
	}
	code, _ := emu.Authorize("tt01bench", false)
	if _, err := e.ExchangeCode(ctx, "tt01bench", tokensource.Secret(code)); err != nil {
		b.Fatal(err)
	}
	return &Handler{
		AppID: &AppIDSource{From: "header", Name: defaultAppIDHeader}, MaxReplayBody: defaultMaxReplayBody,
		comp:   &component{appID: e2eComponent, family: family, engine: e},
		logger: zap.NewNop(), noTransport: &rate.Sometimes{First: 1}, takeCarrier: true, headerKey: defaultAppIDHeader,
	}
}

// BenchmarkHandlerCachedToken is the per-request cost of tptoken when the token
// is cached: appid extraction (and carrier removal), token lookup, and the
// transport's injection into the outgoing request. The upstream round trip is
// not included: that is reverse_proxy's cost with or without tptoken. v1 and
// v2 take the appid from the X-Authorizer-Appid header; the -token-slot cases
// are a drop-in route (tptoken_proxy's defaults: appid token, token auto,
// error_response platform), the appid where the SDK puts the token (v2 header
// access-token, v1 query authorizer_access_token), every slot removed.
func BenchmarkHandlerCachedToken(b *testing.B) {
	for _, c := range []struct {
		name   string
		family tokensource.Family
		slot   bool
	}{{"v1", tokensource.V1, false}, {"v2", tokensource.V2, false}, {"v1-token-slot", tokensource.V1, true}, {"v2-token-slot", tokensource.V2, true}} {
		b.Run(c.name, func(b *testing.B) {
			h := benchHandler(b, c.family)
			query := "a=1&b=two"
			appid := []string{"tt01bench"}
			prepare := func(r *http.Request) { r.Header["X-Authorizer-Appid"] = appid }
			if c.slot {
				h.AppID, h.slot, h.headerKey = &AppIDSource{From: "token"}, true, ""
				h.Token, h.auto, h.ErrorResponse, h.platform = "auto", true, "platform", true
				if c.family == tokensource.V1 {
					query += "&authorizer_access_token=tt01bench"
					prepare = func(r *http.Request) { r.URL.RawQuery = query }
				} else {
					prepare = func(r *http.Request) { r.Header["Access-Token"] = appid }
				}
			}
			req := httptest.NewRequest(http.MethodGet, "/openapi/v1/microapp/app/info?"+query, nil)
			out, w := serveCached(b, h, req, prepare)
			if out == nil || w.Body.Len() != 0 || strings.Contains(out.URL.RawQuery, "tt01bench") ||
				(c.family == tokensource.V1 && !strings.Contains(out.URL.RawQuery, "authorizer_access_token=")) ||
				(c.family == tokensource.V2 && (out.Header.Get("Access-Token") == "" || out.Header.Get("Access-Token") == "tt01bench")) {
				b.Fatalf("the token was not injected: %s %s", out.URL.RawQuery, w.Body)
			}
		})
	}
}

// BenchmarkHandlerCachedAppToken is BenchmarkHandlerCachedToken for a route
// injecting an app's own client_token (fixed app, header access-token).
func BenchmarkHandlerCachedAppToken(b *testing.B) {
	emu, err := emulator.New(emulator.Config{ComponentAppID: e2eComponent, ComponentAppSecret: e2eSecret,
		Apps: []emulator.AppCred{{AppID: e2eApp, Secret: e2eAppSecret}}})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(emu)
	b.Cleanup(srv.Close)
	src, err := tokensource.NewAppSource(tokensource.AppConfig{Kind: tokensource.ClientToken, AppID: e2eApp, Secret: e2eAppSecret,
		Endpoint: srv.URL, Store: &certmagic.FileStorage{Path: b.TempDir()}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = src.Close() })
	if _, err := src.Token(context.Background()); err != nil {
		b.Fatal(err)
	}
	t := &appToken{appID: e2eApp, kind: tokensource.ClientToken, src: src}
	h := &Handler{MaxReplayBody: defaultMaxReplayBody, appKind: tokensource.ClientToken,
		fixedApp: &appTarget{appToken: t, place: newPlacement(nil)},
		logger:   zap.NewNop(), noTransport: &rate.Sometimes{First: 1}}
	req := httptest.NewRequest(http.MethodGet, "/api/apps/v1/qrcode/create/?a=1&b=two", nil)
	out, _ := serveCached(b, h, req, func(*http.Request) {})
	if out == nil || out.Header.Get("Access-Token") == "" {
		b.Fatal("the token was not injected")
	}
}

// serveCached runs h on req (prepare readies it before each run) for the
// benchmark's loop, the next handler standing in for the transport: it
// builds the outgoing request, which it returns with the recorder.
func serveCached(b *testing.B, h *Handler, req *http.Request, prepare func(*http.Request)) (*http.Request, *httptest.ResponseRecorder) {
	ctx := context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer())
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{}) // as Caddy's server does
	req = req.WithContext(ctx)
	var out *http.Request
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		inj := injectionOf(r)
		inj.used = true
		out = inj.outgoing(r, inj.tok, nil)
		return nil
	})
	w := httptest.NewRecorder()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		prepare(req)
		if err := h.ServeHTTP(w, req, next); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	return out, w
}
