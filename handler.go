package tptoken

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/time/rate"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler is the `tptoken` HTTP handler. It resolves the authorizer appid of a
// request, gets its token (failing early, in the family's error envelope, when
// there is none) and hands the token to the `tptoken` reverse_proxy transport,
// which puts it on the outgoing request only, so no log ever sees it.
type Handler struct {
	// Component selects the TP when the app has several; "" means the only one.
	Component string `json:"component,omitempty"`
	// AppID says where the authorizer appid comes from. Default: header X-Authorizer-Appid.
	AppID *AppIDSource `json:"appid,omitempty"`
	// Token is the kind of token injected: authorizer (default), component,
	// or auto: the one the API's path takes (component for the family's
	// TP-level APIs, authorizer otherwise); or an app's own client_token or
	// app_access_token (handler_apps.go).
	Token string `json:"token,omitempty"`
	// App fixes the app of an app token route (default: the only app keeping
	// the kind, unless AppID reads it from each request).
	App string `json:"app,omitempty"`
	// Inject says where an app token goes; default header access-token.
	Inject *InjectPlace `json:"inject,omitempty"`
	// Allow, when set, lists the only authorizer appids served.
	Allow []string `json:"allow,omitempty"`
	// MaxReplayBody bounds the request body buffered to replay a request once
	// after the platform rejected its token. Default 1 MiB; -1 disables replay.
	MaxReplayBody int64 `json:"max_replay_body,omitempty"`
	// ErrorResponse: envelope (default) answers failures in the family's JSON
	// envelope with an HTTP error status; platform answers them as the
	// platform does, HTTP 200 with the code in the envelope (for clients such
	// as the official SDKs, which discard the body of any other status);
	// handle_errors returns them to Caddy for handle_errors routes.
	ErrorResponse string `json:"error_response,omitempty"`

	comp        *component
	allow       map[string]struct{}
	component   bool   // inject the component token
	auto        bool   // inject the token the path takes (token auto)
	slot        bool   // the appid is in the token slot (appid token)
	platform    bool   // error_response platform
	takeCarrier bool   // read (and remove) the appid carrier
	headerKey   string // canonical form of the appid header
	logger      *zap.Logger
	noTransport *rate.Sometimes // bounds the log lines about a missing transport
	loopLog     *rate.Sometimes // bounds the log lines about request loops

	appKind  string                // an app token route: its kind
	fixedApp *appTarget            // its app, when fixed
	appsByID map[string]*appTarget // its apps by appid, when read from the request
}

// AppIDSource is where the appid comes from.
type AppIDSource struct {
	// From: header, query, path, placeholder, or token: wherever the platform's
	// APIs take a token (the appid in the token slot; tokenslot.go).
	From string `json:"from"`
	// Name: the header or query parameter name, or the placeholder (for example
	// {http.request.uri.query.appid}). Unused for path.
	Name string `json:"name,omitempty"`
}

const (
	defaultAppIDHeader   = "X-Authorizer-Appid"
	defaultMaxReplayBody = 1 << 20
)

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.tptoken", New: func() caddy.Module { return new(Handler) }}
}

// Provision finds the component and checks the configuration. An error is
// also logged as a short first line (configError).
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	return configError(h.logger, h.provision(ctx))
}

func (h *Handler) provision(ctx caddy.Context) error {
	h.noTransport = &rate.Sometimes{First: 1, Interval: time.Minute}
	h.loopLog = &rate.Sometimes{First: 1, Interval: time.Minute}
	h.component = h.Token == "component"
	if err := checkAppRoute(h.Token, h.App, h.AppID, h.Component, h.Allow, h.Inject); err != nil {
		return err
	}
	h.auto = h.Token == "auto"
	h.platform = h.ErrorResponse == "platform"
	// A component token needs no appid, nor does an app token route without
	// appid: the carrier is read only when configured.
	h.takeCarrier = !h.component && !isAppKind(h.Token) || h.AppID != nil
	if h.AppID == nil {
		h.AppID = &AppIDSource{From: "header", Name: defaultAppIDHeader}
	}
	// The rules of each option (validate.go), as the Caddyfile parser applies them.
	if err := checkAppIDSource(h.AppID); err != nil {
		return err
	}
	h.slot = h.AppID.From == "token"
	if h.AppID.From != "path" && !h.slot {
		h.headerKey = http.CanonicalHeaderKey(h.AppID.Name)
	}
	if h.Token != "" {
		if err := checkToken(h.Token); err != nil {
			return err
		}
	}
	if h.ErrorResponse != "" {
		if err := checkErrorResponse(h.ErrorResponse); err != nil {
			return err
		}
	}
	if h.MaxReplayBody == 0 {
		h.MaxReplayBody = defaultMaxReplayBody
	}
	if err := checkMaxReplayBody(h.MaxReplayBody); err != nil {
		return err
	}
	for _, a := range h.Allow {
		if err := checkAppID("allow", a); err != nil {
			return err
		}
	}
	if err := checkAllowWithToken(h.Token, h.Allow); err != nil {
		return err
	}
	if len(h.Allow) > 0 {
		h.allow = make(map[string]struct{}, len(h.Allow))
		for _, a := range h.Allow {
			h.allow[a] = struct{}{}
		}
	}
	app, err := appFrom(ctx)
	if err != nil {
		return err
	}
	if isAppKind(h.Token) {
		return h.provisionAppRoute(app)
	}
	h.comp, err = app.component("component", h.Component)
	return err
}

// ServeHTTP resolves the appid and token, then calls the next handler with the
// token in the request context for the transport.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if via, ok := r.Header["Via"]; ok && marked(via) {
		return h.refuseLoop(w, r, repl) // before anything is read (loop.go)
	}
	tpLevel := h.component || h.auto && h.comp.family.TakesComponentToken(r.URL.Path)
	inj := &injection{comp: h.comp, component: tpLevel, maxReplayBody: h.MaxReplayBody}

	if repl != nil {
		repl.Set("http.tptoken.replayed", false) // the transport sets true when it replays
	}
	if h.slot {
		v, conflict := takeTokenSlot(r)
		if conflict != "" {
			return h.fail(w, r, repl, &tokensource.Error{Kind: tokensource.KindBadAppID, Msg: errSlotConflict(conflict).Error()})
		}
		if !tpLevel { // a component token needs no appid: the slot's value is dropped
			inj.appid = v
		}
	} else if h.takeCarrier {
		inj.appid = h.takeAppID(r, repl)
	}
	// {http.tptoken.appid} is set once: empty unless the value is an appid.
	// A value from the token slot may be a token: it is shown once storage
	// knows it (tokenslot.go), and a failure before that shows none (outcome).
	if h.takeCarrier && !h.slot {
		shown := ""
		if tokensource.ValidAppID(inj.appid) {
			shown = inj.appid
		}
		h.showAppID(repl, shown)
	}
	var err error
	switch {
	case h.appKind != "":
		err = h.appToken(r, repl, inj)
	case tpLevel:
		// The appid is not used; it is kept (and shown, above) only if it is one.
		if !tokensource.ValidAppID(inj.appid) {
			inj.appid = ""
		}
		if h.slot {
			h.showAppID(repl, "") // the slot's value was dropped
		}
		inj.tok, err = h.comp.engine.ComponentToken(r.Context())
	default:
		switch {
		case inj.appid == "":
			return h.fail(w, r, repl, &tokensource.Error{Kind: tokensource.KindBadAppID,
				Msg: "no authorizer appid in the request: send it " + h.carrierHint()})
		case !tokensource.ValidAppID(inj.appid):
			return h.fail(w, r, repl, tokensource.CheckAppID(inj.appid))
		}
		if h.allow != nil {
			if _, ok := h.allow[inj.appid]; !ok {
				return h.fail(w, r, repl, h.unconfirmed(errNotAllowed(inj.appid), inj.appid))
			}
		}
		inj.tok, err = h.comp.engine.Token(r.Context(), inj.appid)
		if h.slot {
			if recorded(err) {
				h.showAppID(repl, inj.appid)
			} else {
				err = unconfirmed{err: err, value: inj.appid}
			}
		}
	}
	if err != nil {
		return h.fail(w, r, repl, err)
	}
	if c := h.logger.Check(zapcore.DebugLevel, "token resolved"); c != nil {
		c.Write(zap.String("appid", inj.appid), zap.Uint64("generation", inj.tok.Generation), zap.Time("expiry", inj.tok.Expiry))
	}
	// The guard makes any transport but tptoken's refuse to send the request
	// (routecheck.go): a request never leaves without its token. The hop
	// mark in Via marks what tptoken sends, so that it is refused if it comes
	// back (loop.go). inj is the ResponseWriter of the rest of the route: it
	// cleans the token from informational answers (transport.go). The request
	// ends when next returns: what its body held of the replay memory is given
	// back.
	r.Header[guardHeader] = guardValue
	via := addHopMark(r.Header)
	inj.ResponseWriter = w
	err = next.ServeHTTP(inj, attach(r, inj))
	delete(r.Header, guardHeader)
	removeHopMark(r.Header, via)
	inj.release()
	if !inj.used {
		return h.notInjected(w, r, repl, inj, err)
	}
	if err != nil && h.platform && !inj.answered && !errors.Is(err, context.Canceled) {
		// reverse_proxy got no answer and wrote none: say so as the platform would.
		return h.fail(w, r, repl, errUnreachable{err})
	}
	return err
}

// showAppID sets {http.tptoken.appid}, which the failure envelope and logs
// show: only for a value known to be an appid.
func (h *Handler) showAppID(repl *caddy.Replacer, appid string) {
	if repl != nil {
		repl.Set("http.tptoken.appid", appid)
	}
}

// unconfirmed marks err about appid as unconfirmed when appid came from the
// token slot (tokenslot.go).
func (h *Handler) unconfirmed(err error, appid string) error {
	if h.slot {
		return unconfirmed{err: err, value: appid}
	}
	return err
}

// notInjected handles a request whose token no tptoken transport took. If a
// transport refused it because of the guard, nothing was sent: the client
// gets 502 no_transport and the refusal is counted. Either way the route is
// logged, at most once a minute.
func (h *Handler) notInjected(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, inj *injection, err error) error {
	refused := err != nil && strings.Contains(err.Error(), guardHeader)
	h.noTransport.Do(func() {
		h.logger.Error("the token was not injected: no `transport tptoken` handled this request; add it to the reverse_proxy after "+
			"the tptoken handler (reverse_proxy ... { transport tptoken }). Requests that reached another transport were refused, not sent",
			zap.String("host", r.Host), zap.String("path", r.URL.Path), zap.Bool("refused", refused))
	})
	if !refused {
		return err
	}
	h.countNotInjected(inj)
	return h.fail(w, r, repl, errNoTransport{})
}

// errUnreachable: reverse_proxy got no answer from the platform (it could not
// connect, or the connection failed before an answer); with error_response
// platform the client gets the family's envelope rather than an empty 502.
type errUnreachable struct{ err error }

func (e errUnreachable) Error() string {
	cause := e.err
	var he caddyhttp.HandlerError
	if errors.As(cause, &he) && he.Err != nil {
		cause = he.Err
	}
	msg := cause.Error()
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return "no answer from the platform (" + msg + "); the request may not have reached it: try again later"
}

// errNoTransport: the request reached a reverse_proxy without `transport
// tptoken`, which refused to send it (the guard).
type errNoTransport struct{}

func (errNoTransport) Error() string {
	return "the request was not sent: the reverse_proxy of this route lacks `transport tptoken`, so it would have left without its token; " +
		"the Caddy configuration must be fixed (reverse_proxy ... { transport tptoken })"
}

// takeAppID reads the appid from its carrier and removes the carrier (header,
// query parameter or first path segment) from the request.
func (h *Handler) takeAppID(r *http.Request, repl *caddy.Replacer) string {
	switch h.AppID.From {
	case "header":
		vs := r.Header[h.headerKey]
		if len(vs) == 0 {
			return ""
		}
		delete(r.Header, h.headerKey)
		return strings.TrimSpace(vs[0])
	case "query":
		v, rest, found := takeQueryParam(r.URL.RawQuery, h.AppID.Name)
		if found {
			r.URL.RawQuery = rest
			r.RequestURI = r.URL.RequestURI()
		}
		return v
	case "path":
		v, ok := stripFirstSegment(r.URL)
		if ok {
			r.RequestURI = r.URL.RequestURI()
		}
		return v
	default: // placeholder
		if repl == nil {
			return ""
		}
		return repl.ReplaceAll(h.AppID.Name, "")
	}
}

// stripFirstSegment takes the first path segment as the appid and removes it:
// /tt0123/openapi/v1/x → appid tt0123, path /openapi/v1/x.
//
// Segments are those of the escaped path, so an escaped slash (%2F) stays in its
// segment: /tt%2F01/openapi gives the (invalid) appid "tt/01" and /openapi, never
// the appid "tt" and /01/openapi. The rest keeps the client's escaping.
func stripFirstSegment(u *url.URL) (string, bool) {
	if u.RawPath == "" {
		// Path has the default escaping, so it has no escaped slash either.
		seg, rest, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
		if seg == "" {
			return "", false
		}
		u.Path = "/" + rest
		return seg, true
	}
	rawSeg, rawRest, _ := strings.Cut(strings.TrimPrefix(u.EscapedPath(), "/"), "/")
	seg, err := url.PathUnescape(rawSeg)
	if err != nil || seg == "" {
		return "", false
	}
	rawRest = "/" + rawRest
	rest, err := url.PathUnescape(rawRest)
	if err != nil {
		return "", false
	}
	u.Path, u.RawPath = rest, ""
	if u.EscapedPath() != rawRest {
		u.RawPath = rawRest // escaping the default would change
	}
	return seg, true
}

func (h *Handler) carrierHint() string {
	switch h.AppID.From {
	case "token":
		if h.comp.family == tokensource.V2 {
			return "where the token goes: in the access-token header (or access_token, x-token)"
		}
		return "where the token goes: in the authorizer_access_token query parameter"
	case "header":
		return "in the " + h.AppID.Name + " header"
	case "query":
		return "in the " + h.AppID.Name + " query parameter"
	case "path":
		return "as the first path segment (/<appid>/openapi/...)"
	}
	return "where " + h.AppID.Name + " finds it"
}

// errNotAllowed answers an appid outside the allow list.
type errNotAllowed string

func (e errNotAllowed) Error() string {
	return "authorizer " + string(e) + ": not in this route's allow list"
}

// failure is how a request the handler cannot serve is answered.
type failure struct {
	status     int
	kind       string // {http.tptoken.error}
	errno      int    // {http.tptoken.errno}: the code in the envelope
	retryAfter time.Duration
}

// Codes in the envelope follow the platform's meaning, so a legacy app's error
// handling keeps working: 40001 bad parameter, 40022 not authorized to the TP,
// 40008 operation not allowed, 40000 system error (try again). Never 0, and
// never a code that says "this token is invalid" (rejectsToken): a client, or
// a tptoken in front of this one, would renew its token and try again.
func failureOf(err error) failure {
	var na errNotAllowed
	if errors.As(err, &na) {
		return failure{status: http.StatusForbidden, kind: "not_allowed", errno: 40008}
	}
	if errors.As(err, new(errNoTransport)) {
		return failure{status: http.StatusBadGateway, kind: "no_transport", errno: 40000}
	}
	if errors.As(err, new(errLoop)) {
		return failure{status: http.StatusLoopDetected, kind: "loop", errno: 40000}
	}
	if errors.As(err, new(errTwoHandlers)) {
		return failure{status: http.StatusBadGateway, kind: "two_handlers", errno: 40000}
	}
	if errors.As(err, new(errUnreachable)) {
		return failure{status: http.StatusBadGateway, kind: "platform_unreachable", errno: 40000}
	}
	if errors.As(err, new(errUnknownApp)) {
		return failure{status: http.StatusForbidden, kind: "unknown_app", errno: 40008}
	}
	var te *tokensource.Error
	if !errors.As(err, &te) {
		return failure{status: http.StatusBadGateway, kind: "internal", errno: 40000}
	}
	f := failure{kind: te.Kind.String(), retryAfter: te.RetryAfter}
	switch te.Kind {
	case tokensource.KindBadAppID, tokensource.KindBadInput:
		f.status, f.errno = http.StatusBadRequest, 40001
	case tokensource.KindUnknownAuthorizer, tokensource.KindUnauthorized, tokensource.KindFamilyMismatch:
		f.status, f.errno = http.StatusForbidden, 40022
	case tokensource.KindUnavailable, tokensource.KindNoTicket:
		f.status, f.errno = http.StatusServiceUnavailable, 40000
		if f.retryAfter <= 0 {
			f.retryAfter = time.Second
		}
	case tokensource.KindTimeout:
		f.status, f.errno = http.StatusGatewayTimeout, 40000
	case tokensource.KindPlatform:
		f.status, f.errno = http.StatusBadGateway, 40000
		var pe *tokensource.PlatformError
		if errors.As(err, &pe) && pe.Code != 0 && !rejectsToken(pe.Code) {
			f.errno = pe.Code
		}
	default:
		f.status, f.errno = http.StatusBadGateway, 40000
	}
	return f
}

// rejectsToken reports the codes with which the platform rejects the token a
// call carried (inspect.go): v1 40020, v2 28001003 / 28001008, and the
// component token's 40009 / 40010.
func rejectsToken(code int) bool {
	switch code {
	case 40020, 28001003, 28001008, 40009, 40010:
		return true
	}
	return false
}

// clientMessage is what the legacy app is told: what happened and what to do,
// plus the platform's own answer when there is one. Other causes (storage
// paths, lock errors) go to the log only.
func clientMessage(err error) string {
	var u unconfirmed
	if errors.As(err, &u) {
		return u.hide(clientMessage(u.err))
	}
	var te *tokensource.Error
	if !errors.As(err, &te) {
		return err.Error()
	}
	msg := te.Msg
	if te.AppID != "" {
		msg = "authorizer " + te.AppID + ": " + msg
	}
	var pe *tokensource.PlatformError
	if errors.As(te.Err, &pe) {
		msg += ": " + pe.Error()
	}
	return msg
}

// fail answers a request the handler cannot serve: in the family's envelope, or
// as a Caddy error for handle_errors. Placeholders carry the outcome for logs.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, err error) error {
	if h.ErrorResponse == "handle_errors" {
		f := h.outcome(repl, err)
		return caddyhttp.Error(f.status, err)
	}
	return h.answer(w, repl, err)
}

// outcome sets the placeholders of a failure and logs it.
func (h *Handler) outcome(repl *caddy.Replacer, err error) failure {
	f := failureOf(err)
	if repl != nil {
		if _, ok := repl.Get("http.tptoken.appid"); !ok && h.slot {
			repl.Set("http.tptoken.appid", "") // a token slot's value, not known as an appid
		}
		repl.Set("http.tptoken.error", f.kind)
		repl.Set("http.tptoken.errno", f.errno)
		repl.Set("http.tptoken.message", clientMessage(err))
	}
	lvl := h.logger.Debug // a client's mistake is request-path noise: the access log has the status
	switch {
	case f.kind == "loop":
		return f // logged once a minute (refuseLoop)
	case f.status >= 500:
		lvl = h.logger.Warn
	}
	lvl("request not served", zap.String("kind", f.kind), zap.Int("status", f.status), zap.Error(err))
	return f
}

// answer answers a failure in the family's envelope: with the failure's HTTP
// status, or with error_response platform as the platform answers its own
// errors, HTTP 200 with the code in the body. Either way every field the
// platform's SDKs read is set (docs/sdk-compat.md §What the caller sees):
// v2 err_no, err_msg, err_tips and log_id; v1 errno and message.
func (h *Handler) answer(w http.ResponseWriter, repl *caddy.Replacer, err error) error {
	f := h.outcome(repl, err)
	msg := clientMessage(err)
	if f.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((f.retryAfter+time.Second-1)/time.Second)))
	}
	appid := ""
	if repl != nil {
		appid, _ = repl.GetString("http.tptoken.appid")
	}
	detail := map[string]any{"error": f.kind, "appid": appid, "status": f.status}
	var u unconfirmed
	if errors.As(err, &u) {
		detail["appid_fingerprint"] = tokensource.Secret(u.value).Fingerprint()
	}
	if f.retryAfter > 0 {
		detail["retry_after"] = int((f.retryAfter + time.Second - 1) / time.Second)
	}
	var body map[string]any
	if h.appKind != "" || h.comp.family == tokensource.V2 {
		logID := ""
		if repl != nil {
			logID, _ = repl.GetString("http.request.uuid")
		}
		body = map[string]any{"err_no": f.errno, "err_msg": msg, "err_tips": msg, "log_id": logID, "data": map[string]any{}, "tptoken": detail}
		h.failureEnvelope(body, detail, msg)
	} else {
		body = map[string]any{"errno": f.errno, "message": msg, "tptoken": detail}
	}
	b, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	if h.platform {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(f.status)
	}
	_, _ = w.Write(b)
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
