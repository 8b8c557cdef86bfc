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
	"strings"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

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
// 40020 or v2 err_no 28001003 / 28001008), the transport invalidates that token
// (only if it is still the current one), gets a fresh one and replays the request
// once with the identical body.
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
type injection struct {
	engine         *tokensource.Engine
	family         tokensource.Family
	componentAppID string
	appid          string
	tok            tokensource.Token
	maxReplayBody  int64 // < 0: no replay
	used           atomic.Bool
	component      bool            // component token instead of authorizer token
	sent           bool            // out is in use
	bodyRead       bool            // the request body was read (prefix)
	complete       bool            // prefix is the whole body
	out            outgoingRequest // the first outgoing request
	prefix         []byte          // what was read of the request body
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

	body, replay := inj.requestBody(req)
	resp, err := t.send(req, inj, inj.tok, body)
	if err != nil || !replay {
		return resp, err
	}
	code := inspect(resp, inj.component)
	if code == 0 {
		return resp, nil
	}
	fresh, ferr := inj.refetch(req.Context())
	if ferr != nil || fresh.Value == inj.tok.Value {
		countReplay(inj.componentAppID, false)
		t.logger.Warn("the platform rejected the token and no other token is available; not replaying",
			zap.String("appid", inj.appid), zap.Int("code", code), zap.Error(ferr))
		return resp, nil
	}
	_ = resp.Body.Close()
	countReplay(inj.componentAppID, true)
	t.logger.Info("the platform rejected the token; replaying once with a fresh one",
		zap.String("appid", inj.appid), zap.Int("code", code), zap.Uint64("generation", fresh.Generation))
	if repl, ok := req.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("http.tptoken.replayed", true)
	}
	return t.send(req, inj, fresh, body)
}

// send forwards a copy of req carrying tok. req itself is never modified: it is
// what reverse_proxy logs.
func (t *Transport) send(req *http.Request, inj *injection, tok tokensource.Token, body *bodyCopy) (*http.Response, error) {
	resp, err := t.HTTPTransport.RoundTrip(inj.outgoing(req, tok, body))
	if err != nil && strings.Contains(err.Error(), tok.Value.Reveal()) {
		err = errors.New("upstream round trip failed (error text withheld: it quoted the token)")
	}
	return resp, err
}

// outgoing is a shallow copy of req with the token injected for the family:
// v1 query component_appid + authorizer_access_token (or component_access_token),
// any client-sent copies removed and the rest of the query kept byte for byte;
// v2 header access-token. The copy and its URL are one allocation, and the v2
// header map shares the client's (unmodified) value slices.
func (inj *injection) outgoing(req *http.Request, tok tokensource.Token, body *bodyCopy) *http.Request {
	o := &inj.out // the first send uses the injection's own space: one allocation less
	if inj.sent {
		o = new(outgoingRequest)
	}
	inj.sent = true
	o.Request = *req
	out := &o.Request
	secret := tok.Value.Reveal()
	if inj.family == tokensource.V2 {
		h := make(http.Header, len(req.Header)+1)
		for k, v := range req.Header {
			h[k] = v
		}
		h["Access-Token"] = []string{secret}
		out.Header = h
	} else {
		o.url = *req.URL
		param := "authorizer_access_token"
		if inj.component {
			param = "component_access_token"
		}
		o.url.RawQuery = injectV1(o.url.RawQuery, inj.componentAppID, param, secret)
		out.URL = &o.url
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

// refetch invalidates the token sent (only if still current) and gets a fresh one.
func (inj *injection) refetch(ctx context.Context) (tokensource.Token, error) {
	if inj.component {
		inj.engine.InvalidateComponent(inj.tok)
		return inj.engine.ComponentToken(ctx)
	}
	inj.engine.Invalidate(inj.appid, inj.tok)
	return inj.engine.Token(ctx, inj.appid)
}

// requestBody is the body to send. A body of at most maxReplayBody is read
// once and kept (the request is then replayable); the first part of a larger
// one is kept and sent in front of the rest. reverse_proxy calls RoundTrip again
// with the same request after a dial error, and the part already read is not
// in req.Body any more: every attempt gets the whole body from what is kept.
// The original body is never closed here (the server closes it).
func (inj *injection) requestBody(req *http.Request) (body *bodyCopy, replayable bool) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, inj.maxReplayBody >= 0
	}
	if !inj.bodyRead {
		inj.bodyRead = true
		if inj.maxReplayBody >= 0 && req.ContentLength <= inj.maxReplayBody {
			buf, err := readUpTo(req.Body, req.ContentLength, inj.maxReplayBody+1)
			inj.prefix = buf
			inj.complete = err == nil && int64(len(buf)) <= inj.maxReplayBody
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

// readUpTo is io.ReadAll(io.LimitReader(r, limit)) that reads a body of
// announced length (a Content-Length) into one buffer of that size, where
// io.ReadAll starts at 512 bytes and grows (three allocations and twice the
// bytes for a 1 KiB body).
func readUpTo(r io.Reader, announced, limit int64) ([]byte, error) {
	lr := io.LimitReader(r, limit)
	if announced <= 0 || announced >= limit {
		return io.ReadAll(lr)
	}
	buf := make([]byte, announced+1) // one more: a body longer than announced shows
	n, err := io.ReadFull(lr, buf)
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		return buf[:n], nil
	case err != nil:
		return buf[:n], err
	}
	rest, err := io.ReadAll(lr) // longer than announced: the rest, as io.ReadAll would
	return append(buf, rest...), err
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
func inspect(resp *http.Response, component bool) int {
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
	return invalidTokenCode(plain, component)
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

// invalidCodes are the codes that mean "the token you sent is not valid", as
// they appear in a JSON body: a body without one of them is not decoded. They
// are grouped by a common prefix, so a success answer (which holds neither
// prefix) is scanned twice, not once per code.
var invalidCodes = []struct {
	prefix []byte
	codes  [][]byte
}{
	{[]byte("400"), [][]byte{[]byte("40020"), []byte("40009"), []byte("40010")}},
	{[]byte("2800100"), [][]byte{[]byte("28001003"), []byte("28001008")}},
}

// holdsInvalidCode reports whether b holds one of invalidCodes anywhere.
func holdsInvalidCode(b []byte) bool {
	for _, g := range invalidCodes {
		if !bytes.Contains(b, g.prefix) {
			continue
		}
		for _, c := range g.codes {
			if bytes.Contains(b, c) {
				return true
			}
		}
	}
	return false
}

// invalidTokenCode reads errno / err_no of a JSON answer and returns it if it
// means the token sent was rejected.
func invalidTokenCode(b []byte, component bool) int {
	if !holdsInvalidCode(b) {
		return 0
	}
	var env struct {
		Errno json.Number `json:"errno"`
		ErrNo json.Number `json:"err_no"`
	}
	if json.Unmarshal(b, &env) != nil {
		return 0
	}
	for _, n := range []json.Number{env.ErrNo, env.Errno} {
		code, err := n.Int64()
		if err != nil || code == 0 {
			continue
		}
		switch tokensource.ClassifyCode(int(code)) {
		case tokensource.ClassInvalidAuthorizerToken:
			return int(code)
		case tokensource.ClassComponentToken:
			if component {
				return int(code)
			}
		}
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
