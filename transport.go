package tptoken

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

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
// identical body.
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
// class (scattered, their padding took it to 704).
//
// It is also the ResponseWriter the handler gives reverse_proxy, so that the
// headers of an informational (1xx) answer, which reverse_proxy writes to the
// client before RoundTrip returns, are cleaned of the token too (WriteHeader).
type injection struct {
	caddyhttp.ResponseWriterWrapper
	comp          *component
	appid         string
	tok           tokensource.Token
	replayed      tokensource.Secret // the token of the replay, if any
	maxReplayBody int64              // < 0: no replay
	reserved      int64              // bytes of replayMemory held by prefix
	used          atomic.Bool
	component     bool            // component token instead of authorizer token
	sent          bool            // out is in use
	bodyRead      bool            // the request body was read (prefix)
	complete      bool            // prefix is the whole body
	out           outgoingRequest // the first outgoing request
	prefix        []byte          // what was read of the request body
}

// Maximum response size inspected for an invalid-token code; larger or
// streaming answers pass through untouched.
const maxInspect = 64 << 10

// RoundTrip injects the token and forwards the request, replaying it once if
// the platform rejects the token.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	inj := injectionOf(req)
	if inj == nil {
		return t.HTTPTransport.RoundTrip(req)
	}
	inj.used.Store(true)
	delete(req.Header, guardHeader) // the guard stops every other transport (routecheck.go)

	body, replay := inj.requestBody(req, t.logger)
	resp, err := t.send(req, inj, inj.tok, body)
	if err != nil || !replay {
		return resp, err
	}
	code := inspect(resp, inj.comp.family, inj.component)
	if code == 0 {
		return resp, nil
	}
	dropped := inj.invalidate()
	fresh, ferr := inj.token(req.Context())
	if ferr != nil || fresh.Value == inj.tok.Value {
		countReplay(inj.comp.appID, false)
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
	countReplay(inj.comp.appID, true)
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
	if inj.comp.family == tokensource.V2 {
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
	} else {
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
	if inj.component {
		return inj.comp.engine.InvalidateComponent(inj.tok)
	}
	return inj.comp.engine.Invalidate(inj.appid, inj.tok)
}

// token is the token to use now.
func (inj *injection) token(ctx context.Context) (tokensource.Token, error) {
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

// requestBody is the body to send. A body of at most maxReplayBody is read
// once and kept (the request is then replayable); the first part of a larger
// one, or of one that replayMemory has no room for, is kept and sent in front
// of the rest. reverse_proxy calls RoundTrip again with the same request after
// a dial error, and the part already read is not in req.Body any more: every
// attempt gets the whole body from what is kept. The original body is never
// closed here (the server closes it).
func (inj *injection) requestBody(req *http.Request, logger *zap.Logger) (body *bodyCopy, replayable bool) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, inj.maxReplayBody >= 0
	}
	if !inj.bodyRead {
		inj.bodyRead = true
		if inj.maxReplayBody >= 0 && req.ContentLength <= inj.maxReplayBody {
			b := readBuffered(req.Body, req.ContentLength, inj.maxReplayBody, replayMemory)
			inj.prefix, inj.reserved = b.buf, b.reserved
			inj.complete = b.eof && b.err == nil && int64(len(b.buf)) <= inj.maxReplayBody
			if b.refused {
				countUnbuffered(inj.comp.appID)
				replayMemoryFull.Do(func() {
					logger.Warn("max_replay_memory is taken by requests in flight: streaming request bodies without a replay (logged once a minute; see caddy_tptoken_replay_buffer_full_total)",
						zap.Int64("max_replay_memory", replayMemory.limit.Load()))
				})
			}
		}
	}
	switch {
	case inj.complete:
		return &bodyCopy{buf: inj.prefix, complete: true}, true
	case len(inj.prefix) == 0:
		return nil, false // nothing read: req.Body goes as it is
	}
	return &bodyCopy{buf: inj.prefix, rest: req.Body}, false
}

// release gives back what the request held of replayMemory. The handler calls
// it when the request ends.
func (inj *injection) release() {
	if inj.reserved > 0 {
		replayMemory.give(inj.reserved)
		inj.reserved = 0
	}
}

// bodyCopy is what an outgoing request sends as its body.
type bodyCopy struct {
	buf      []byte    // the whole body (complete) or its first part
	rest     io.Reader // the unread part (when not complete)
	complete bool
}

func (b *bodyCopy) reader() io.ReadCloser {
	if b.complete {
		return io.NopCloser(bytes.NewReader(b.buf))
	}
	if len(b.buf) == 0 {
		return io.NopCloser(b.rest)
	}
	return io.NopCloser(io.MultiReader(bytes.NewReader(b.buf), b.rest))
}

// readCloser puts a read part back in front of a body.
type readCloser struct {
	io.Reader
	io.Closer
}

// inspect returns the platform code of a small JSON answer that reports an
// invalid token, or 0. Only answers with a JSON media type and at most
// maxInspect bytes are read (the body is then put back); others are untouched.
func inspect(resp *http.Response, family tokensource.Family, component bool) int {
	if resp.StatusCode != http.StatusOK || resp.ContentLength > maxInspect || resp.ContentLength == 0 {
		return 0
	}
	// The keys are canonical: index the map instead of Header.Get, which
	// canonicalizes its argument on every call.
	if !isJSON(firstValue(resp.Header, "Content-Type")) {
		return 0
	}
	enc := firstValue(resp.Header, "Content-Encoding")
	if enc != "" && enc != "gzip" && enc != "identity" {
		return 0
	}
	var raw []byte
	var err error
	if resp.ContentLength > 0 {
		raw = make([]byte, resp.ContentLength)
		_, err = io.ReadFull(resp.Body, raw)
	} else {
		raw, err = io.ReadAll(io.LimitReader(resp.Body, maxInspect+1))
	}
	if err != nil || len(raw) > maxInspect {
		// too large after all (unknown length), or cut short: hand back what was
		// read in front of the rest, untouched
		resp.Body = readCloser{io.MultiReader(bytes.NewReader(raw), resp.Body), resp.Body}
		return 0
	}
	_ = resp.Body.Close()
	body := new(bytesBody)
	body.Reset(raw)
	resp.Body = body
	plain := raw
	if enc == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return 0
		}
		plain, err = io.ReadAll(io.LimitReader(zr, 4*maxInspect))
		if err != nil {
			return 0
		}
	}
	return invalidTokenCode(plain, family, component)
}

// firstValue is h.Get(key) for a key already in canonical form.
func firstValue(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// bytesBody is an inspected answer handed back to reverse_proxy: what
// io.NopCloser(bytes.NewReader(b)) is (WriteTo included), in one allocation.
type bytesBody struct{ bytes.Reader }

// Read returns io.EOF with the last bytes, as net/http's body of a known
// length does: reverse_proxy copies answers in a loop that allocates on every
// turn (a logger each), and a separate (0, io.EOF) would cost it one more.
func (b *bytesBody) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	if err == nil && b.Len() == 0 {
		err = io.EOF
	}
	return n, err
}

// Close does nothing: the upstream's body is closed already.
func (*bytesBody) Close() error { return nil }

// isJSON reports a JSON media type (application/json, text/json, or +json).
func isJSON(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	mt = strings.TrimSpace(mt)
	return strings.EqualFold(mt, "application/json") || strings.EqualFold(mt, "text/json") ||
		len(mt) > 5 && strings.EqualFold(mt[len(mt)-5:], "+json")
}

// rejections are, per family and token kind, the codes with which an answer
// rejects the token sent (tokensource.RejectionCodes), in the form they take in
// a JSON body: a body without one of them is not decoded.
var rejections = func() (t [2][2][][]byte) {
	for i, f := range []tokensource.Family{tokensource.V1, tokensource.V2} {
		for j, component := range []bool{false, true} {
			for _, c := range tokensource.RejectionCodes(f, component) {
				t[i][j] = append(t[i][j], []byte(strconv.Itoa(c)))
			}
		}
	}
	return t
}()

// invalidTokenCode returns the code of a JSON answer that rejects the token
// sent, or 0. Only the family's own top-level field counts (v1 errno, v2
// err_no), and only the codes for the kind of token the route injects: the
// client chooses the path and query, so an answer it can steer must not make a
// code of the other family, or of the other token, or one nested in data, count.
func invalidTokenCode(b []byte, family tokensource.Family, component bool) int {
	i, j := 0, 0
	if family == tokensource.V2 {
		i = 1
	}
	if component {
		j = 1
	}
	held := false
	for _, c := range rejections[i][j] {
		if bytes.Contains(b, c) {
			held = true
			break
		}
	}
	if !held {
		return 0
	}
	var v1 struct {
		Errno json.Number `json:"errno"`
	}
	var v2 struct {
		ErrNo json.Number `json:"err_no"`
	}
	var err error
	n := &v1.Errno
	if i == 0 {
		err = json.Unmarshal(b, &v1)
	} else {
		err, n = json.Unmarshal(b, &v2), &v2.ErrNo
	}
	if err != nil {
		return 0
	}
	code, err := n.Int64()
	if err != nil {
		return 0
	}
	if slices.Contains(tokensource.RejectionCodes(family, component), int(code)) {
		return int(code)
	}
	return 0
}

// Interface guards
var (
	_ caddy.Provisioner         = (*Transport)(nil)
	_ caddy.CleanerUpper        = (*Transport)(nil)
	_ http.RoundTripper         = (*Transport)(nil)
	_ reverseproxy.TLSTransport = (*Transport)(nil)
)
