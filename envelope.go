package tptoken

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// failure is how a request the handler cannot serve is answered.
type failure struct {
	status     int
	kind       string // {http.tptoken.error}
	errno      int    // {http.tptoken.errno}: the code in the envelope
	retryAfter time.Duration
}

// Codes in the envelope follow the platform's meaning, so a legacy app's error
// handling keeps working: 40001 bad parameter, 40022 not authorized to the TP,
// 40008 operation not allowed, 40000 system error (try again).
func failureOf(err error) failure {
	var na errNotAllowed
	if errors.As(err, &na) {
		return failure{status: http.StatusForbidden, kind: "not_allowed", errno: 40008}
	}
	if errors.As(err, new(errNoTransport)) {
		return failure{status: http.StatusBadGateway, kind: "no_transport", errno: 40000}
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
		if errors.As(err, &pe) && pe.Code != 0 {
			f.errno = pe.Code
		}
	default:
		f.status, f.errno = http.StatusBadGateway, 40000
	}
	return f
}

// clientMessage is what the legacy app is told: what happened and what to do,
// plus the platform's own answer when there is one. Other causes (storage
// paths, lock errors) go to the log only.
func clientMessage(err error) string {
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
	f := failureOf(err)
	msg := clientMessage(err)
	if repl != nil {
		repl.Set("http.tptoken.error", f.kind)
		repl.Set("http.tptoken.errno", f.errno)
		repl.Set("http.tptoken.message", msg)
	}
	if f.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((f.retryAfter+time.Second-1)/time.Second)))
	}
	lvl := h.logger.Debug // a client's mistake is request-path noise: the access log has the status
	if f.status >= 500 {
		lvl = h.logger.Warn
	}
	lvl("request not served", zap.String("kind", f.kind), zap.Int("status", f.status), zap.Error(err))
	if h.ErrorResponse == "handle_errors" {
		return caddyhttp.Error(f.status, err)
	}
	appid := ""
	if repl != nil {
		appid, _ = repl.GetString("http.tptoken.appid")
	}
	detail := map[string]any{"error": f.kind, "appid": appid}
	if f.retryAfter > 0 {
		detail["retry_after"] = int((f.retryAfter + time.Second - 1) / time.Second)
	}
	var body map[string]any
	if h.comp.family == tokensource.V2 {
		logID := ""
		if repl != nil {
			logID, _ = repl.GetString("http.request.uuid")
		}
		body = map[string]any{"err_no": f.errno, "err_msg": msg, "log_id": logID, "data": map[string]any{}, "tptoken": detail}
	} else {
		body = map[string]any{"errno": f.errno, "message": msg, "tptoken": detail}
	}
	b, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(f.status)
	_, _ = w.Write(b)
	return nil
}
