package tptoken

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

func init() {
	caddy.RegisterModule(Transport{})
}

// Transport is the `tptoken` reverse_proxy transport: Caddy's standard HTTP
// transport (every `transport http` option works) that puts the token resolved
// by the tptoken handler on the outgoing request only. The request reverse_proxy
// logs never carries the token, so neither does any log line.
//
// When the platform answers that the token is invalid (HTTP 200 with v1 errno
// 40020 or v2 err_no 28001003 / 28001008, in the route's own family field),
// the transport reports that token to the engine (which drops it only if it is
// still the current one, within the bounds of tokensource/reject.go), gets the
// token to use and, if it is another one, replays the request once with the
// identical body. When it answers that the authorization is gone (inspect.go
// goneCodes), the answer goes back as it is, without a replay, and is reported
// within the same bounds: the engine verifies it with one refresh.
//
// No response header it hands back carries the token (redact.go): an upstream
// redirect keeping the query, or an echo of the access-token header, is
// cleaned before reverse_proxy or any log sees the answer.
type Transport struct {
	reverseproxy.HTTPTransport

	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Transport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.reverse_proxy.transport.tptoken", New: func() caddy.Module { return new(Transport) }}
}

// Provision provisions the embedded HTTP transport.
func (t *Transport) Provision(ctx caddy.Context) error {
	t.logger = ctx.Logger()
	return t.HTTPTransport.Provision(ctx)
}

// injectionVar is the request variable (caddyhttp vars) holding the handler's
// *injection for the transport. A request variable, unlike a new context
// value, costs the request no copy. Printed through a placeholder it shows
// only "tptoken"; the token itself is a redacting Secret.
const injectionVar = "tptoken.injection"

// injectionKey is the context key used instead when a request has no vars
// table (a handler used outside Caddy's HTTP server, as in tests).
type injectionKey struct{}

// attach hands inj to the transport through r's variables (or its context).
func attach(r *http.Request, inj *injection) *http.Request {
	if vars, ok := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any); ok {
		vars[injectionVar] = inj // caddyhttp.SetVar, without walking the context again
		return r
	}
	return r.WithContext(context.WithValue(r.Context(), injectionKey{}, inj))
}

// injectionOf returns what the tptoken handler attached to the request, if anything.
func injectionOf(r *http.Request) *injection {
	if inj, ok := caddyhttp.GetVar(r.Context(), injectionVar).(*injection); ok {
		return inj
	}
	inj, _ := r.Context().Value(injectionKey{}).(*injection)
	return inj
}

// injection is what the handler resolved for one request. It is allocated for
// every request: the flags sit together so that it fits the 640-byte size
// class with the allocator's 8-byte header (one byte more takes it to 704).
// The transport runs in the handler's goroutine (reverse_proxy calls
// RoundTrip synchronously), so its flags need no atomics.
//
// It is also the ResponseWriter the handler gives reverse_proxy, so that the
// headers of an informational (1xx) answer, which reverse_proxy writes to the
// client before RoundTrip returns, are cleaned of the token too (WriteHeader).
type injection struct {
	caddyhttp.ResponseWriterWrapper
	comp          *component
	app           *appTarget // an app token route (handler_apps.go); comp is nil
	appid         string
	tok           tokensource.Token
	replayed      tokensource.Secret // the token of the replay, if any
	maxReplayBody int64              // < 0: no replay
	reserved      int64              // bytes of replayMemory held by prefix
	used          bool               // a tptoken transport took the request
	answered      bool               // RoundTrip returned an answer (reverse_proxy writes it)
	component     bool               // component token instead of authorizer token
	sent          bool               // out is in use
	bodyRead      bool               // the request body was read (prefix)
	complete      bool               // prefix is the whole body
	out           outgoingRequest    // the first outgoing request
	prefix        []byte             // what was read of the request body
}

// RoundTrip injects the token and forwards the request, replaying it once if
// the platform rejects the token.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	inj := injectionOf(req)
	if inj == nil {
		return t.HTTPTransport.RoundTrip(req)
	}
	inj.used = true
	delete(req.Header, guardHeader) // the guard stops every other transport (routecheck.go)

	resp, err := t.roundTrip(req, inj)
	inj.answered = err == nil
	return resp, err
}

func (t *Transport) roundTrip(req *http.Request, inj *injection) (*http.Response, error) {
	body, replay := inj.requestBody(req, t.logger)
	resp, err := t.send(req, inj, inj.tok, body)
	// A component or app token route's answer matters only for a replay; an
	// authorizer route's also when it says the authorization is gone, which
	// needs none.
	if err != nil || !replay && (inj.component || inj.app != nil) {
		return resp, err
	}
	code, kind := inj.rejection(resp)
	if kind == answerGone {
		acted := inj.comp.engine.ReportGone(inj.appid, inj.tok)
		if c := t.logger.Check(zapcore.DebugLevel, "the platform answered that the authorization is gone; reported, not replayed"); c != nil {
			c.Write(zap.String("appid", inj.appid), zap.Int("code", code), zap.Bool("acted_on", acted))
		}
		return resp, nil
	}
	if kind != answerRejected || !replay {
		return resp, nil
	}
	dropped := inj.invalidate()
	fresh, ferr := inj.token(req.Context())
	if ferr != nil || fresh.Value == inj.tok.Value {
		countReplay(inj.owner(), inj.kind(), false)
		// Once per token at most (tokensource/reject.go): an answer the engine
		// did not act on is not worth a line each.
		level := zapcore.DebugLevel
		if dropped {
			level = zapcore.WarnLevel
		}
		if c := t.logger.Check(level, "the platform rejected the token and no other token is available; not replaying"); c != nil {
			c.Write(zap.String("appid", inj.appid), zap.Int("code", code), zap.Bool("acted_on", dropped), zap.Error(ferr))
		}
		return resp, nil
	}
	_ = resp.Body.Close()
	countReplay(inj.owner(), inj.kind(), true)
	t.logger.Info("the platform rejected the token; replaying once with a fresh one",
		zap.String("appid", inj.appid), zap.Int("code", code), zap.Uint64("generation", fresh.Generation))
	if repl, ok := req.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("http.tptoken.replayed", true)
	}
	inj.replayed = fresh.Value
	return t.send(req, inj, fresh, body)
}

// send forwards a copy of req carrying tok. req itself is never modified: it is
// what reverse_proxy logs. The answer's headers are cleaned of tok before
// anyone sees them.
func (t *Transport) send(req *http.Request, inj *injection, tok tokensource.Token, body *bodyCopy) (*http.Response, error) {
	resp, err := t.HTTPTransport.RoundTrip(inj.outgoing(req, tok, body))
	secret := tok.Value.Reveal()
	if err != nil && holdsSecret(err.Error(), secret) {
		err = errors.New("upstream round trip failed (error text withheld: it quoted the token)")
	}
	if resp != nil {
		if names := redactHeader(resp.Header, secret); names != nil {
			if c := t.logger.Check(zapcore.DebugLevel, "removed the injected token from upstream response headers"); c != nil {
				c.Write(zap.String("appid", inj.appid), zap.Strings("headers", names), zap.Int("status", resp.StatusCode))
			}
		}
		if len(resp.Trailer) > 0 && resp.Body != nil {
			resp.Body = &trailerRedactor{ReadCloser: resp.Body, resp: resp, secret: secret}
		}
	}
	return resp, err
}

// outgoing is a shallow copy of req with the token injected for the family:
// v1 query component_appid + authorizer_access_token (or component_access_token),
// any client-sent copies removed and the rest of the query kept byte for byte;
// v2 header access-token. The other family's carriers are removed too (v1: the
// access-token header; v2: the v1 query parameters), so a client cannot slip a
// token of its own past the injection. The copy and its URL are one
// allocation, and a copied header map shares the client's (unmodified) value
// slices.
func (inj *injection) outgoing(req *http.Request, tok tokensource.Token, body *bodyCopy) *http.Request {
	o := &inj.out // the first send uses the injection's own space: one allocation less
	if inj.sent {
		o = new(outgoingRequest)
	}
	inj.sent = true
	o.Request = *req
	out := &o.Request
	secret := tok.Value.Reveal()
	switch {
	case inj.app != nil:
		inj.app.place.put(o, req, secret)
	case inj.comp.family == tokensource.V2:
		h := make(http.Header, len(req.Header)+1)
		for k, v := range req.Header {
			h[k] = v
		}
		h["Access-Token"] = []string{secret}
		out.Header = h
		if q := withoutCredentials(req.URL.RawQuery); len(q) != len(req.URL.RawQuery) {
			o.url = *req.URL
			o.url.RawQuery = q
			out.URL = &o.url
		}
	default:
		o.url = *req.URL
		param := "authorizer_access_token"
		if inj.component {
			param = "component_access_token"
		}
		o.url.RawQuery = injectV1(o.url.RawQuery, inj.comp.appID, param, secret)
		out.URL = &o.url
		if _, ok := req.Header["Access-Token"]; ok {
			h := req.Header.Clone()
			delete(h, "Access-Token")
			out.Header = h
		}
	}
	if body != nil {
		out.Body = body.reader()
		if body.complete {
			out.ContentLength = int64(len(body.buf))
			out.GetBody = func() (io.ReadCloser, error) { return body.reader(), nil }
		}
	}
	if inj.app != nil && inj.app.place.in == injectBody {
		putInBody(out, body, inj.app.place.name, secret)
	}
	return out
}

type outgoingRequest struct {
	http.Request
	url url.URL
}

// String keeps the injection out of anything that prints request variables.
func (inj *injection) String() string { return "tptoken" }

// invalidate reports the token sent as rejected; the engine decides whether to
// drop it (tokensource/reject.go). It reports whether it was dropped.
func (inj *injection) invalidate() bool {
	if inj.app != nil {
		return inj.app.src.Invalidate(inj.tok)
	}
	if inj.component {
		return inj.comp.engine.InvalidateComponent(inj.tok)
	}
	return inj.comp.engine.Invalidate(inj.appid, inj.tok)
}

// token is the token to use now.
func (inj *injection) token(ctx context.Context) (tokensource.Token, error) {
	if inj.app != nil {
		return inj.app.src.Token(ctx)
	}
	if inj.component {
		return inj.comp.engine.ComponentToken(ctx)
	}
	return inj.comp.engine.Token(ctx, inj.appid)
}

// WriteHeader cleans the headers of an informational answer (103 Early Hints,
// forwarded by reverse_proxy as they arrive) of the tokens sent.
func (inj *injection) WriteHeader(code int) {
	if code < http.StatusOK {
		h := inj.Header()
		redactHeader(h, inj.tok.Value.Reveal())
		if inj.replayed != "" {
			redactHeader(h, inj.replayed.Reveal())
		}
	}
	inj.ResponseWriterWrapper.WriteHeader(code)
}

// Interface guards
var (
	_ caddy.Provisioner         = (*Transport)(nil)
	_ caddy.CleanerUpper        = (*Transport)(nil)
	_ http.RoundTripper         = (*Transport)(nil)
	_ reverseproxy.TLSTransport = (*Transport)(nil)
)
