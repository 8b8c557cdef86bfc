package tptoken

import (
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

func init() {
	caddy.RegisterModule(Events{})
}

// Events is the `tptoken_events` handler: the TP's 授权事件接收 URL and the
// authorization redirect target. It faces the internet, so everything it does
// for a request it cannot authenticate is cheap and bounded (README, Security).
//
//   - POST: a platform push. It is verified (SHA1 signature, constant time)
//     before anything else, decrypted, checked to be for this TP and stamped
//     within the push window, and acted on once: a ticket is stored;
//     AUTHORIZED / UPDATE_AUTHORIZED exchange their code at once; UNAUTHORIZED
//     revokes. The answer is exactly `success` (also to a second delivery of a
//     push already handled, which is not acted on again). Malformed, forged
//     and stale pushes get a 4xx and change nothing.
//   - GET with authorization_code: the redirect after an authorization link.
//     A code already exchanged (usually by the AUTHORIZED push) is answered
//     from the code index; others are exchanged within the redirect budget
//     (redirect_exchanges, redirect_calls), never on the call slots refreshes
//     use. A short page (no token, no code) shows the result.
type Events struct {
	// Component selects the TP; "" means every configured component (a push is
	// matched by its signature and appid).
	Component string `json:"component,omitempty"`
	// RequireState: exchange only redirects that carry a valid state of an
	// authorization link made by tptoken (`caddy tptoken auth-link`); other
	// redirects are refused without a platform call. Pushes are not affected.
	RequireState bool `json:"require_state,omitempty"`

	comps    []*component
	logger   *zap.Logger
	refusals *refusalLog
}

// maxPushBody bounds a push or redirect body.
const maxPushBody = 64 << 10

// CaddyModule returns the Caddy module information.
func (Events) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.tptoken_events", New: func() caddy.Module { return new(Events) }}
}

// Provision finds the components whose pushes this handler receives.
func (ev *Events) Provision(ctx caddy.Context) error {
	ev.logger = ctx.Logger()
	ev.refusals = newRefusalLog(ev.logger)
	app, err := appFrom(ctx)
	if err != nil {
		return err
	}
	if ev.Component != "" {
		c, err := app.component("tptoken_events component", ev.Component)
		if err != nil {
			return err
		}
		ev.comps = []*component{c}
	} else {
		for _, id := range app.order {
			ev.comps = append(ev.comps, app.comps[id])
		}
	}
	for _, c := range ev.comps {
		if c.push == nil {
			return fmt.Errorf("tptoken_events: component %s has no message_token / encoding_aes_key: set both to receive pushes", c.appID)
		}
	}
	if len(ev.comps) == 0 {
		return errors.New("tptoken_events: the tptoken app has no component")
	}
	if ev.RequireState && len(ev.comps) != 1 {
		return errors.New("tptoken_events: require_state needs a single TP: give this route a component appid")
	}
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		if err := registerCollectors(reg, eventsRefused()); err != nil {
			return fmt.Errorf("registering tptoken_events metrics: %v", err)
		}
	}
	return nil
}

// ServeHTTP handles a push (POST) or an authorization redirect (GET).
func (ev *Events) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	switch r.Method {
	case http.MethodPost:
		return ev.push(w, r)
	case http.MethodGet, http.MethodHead:
		return ev.redirect(w, r)
	}
	w.Header().Set("Allow", "GET, POST")
	http.Error(w, "method not allowed: the platform POSTs pushes; browsers GET the authorization redirect", http.StatusMethodNotAllowed)
	return nil
}

// componentLabel names the TP of a request not (yet) matched to one.
func (ev *Events) componentLabel() string {
	if len(ev.comps) == 1 {
		return ev.comps[0].appID
	}
	return ""
}

// rejectPush answers a push that is not acted on (4xx), counted and logged sampled.
func (ev *Events) rejectPush(w http.ResponseWriter, r *http.Request, comp, reason string, status int, msg string, err error) {
	ev.refusals.refused(zap.WarnLevel, comp, kindPush, reason, "push rejected",
		zap.Int("status", status), zap.Error(err), zap.String("remote", r.RemoteAddr))
	http.Error(w, msg, status)
}

func (ev *Events) push(w http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxPushBody+1))
	if err != nil {
		ev.rejectPush(w, r, ev.componentLabel(), reasonUnreadable, http.StatusBadRequest, "cannot read the body", err)
		return nil
	}
	if len(body) > maxPushBody {
		ev.rejectPush(w, r, ev.componentLabel(), reasonTooLarge, http.StatusRequestEntityTooLarge, "body larger than 64 KiB", nil)
		return nil
	}
	var msg *push.Message
	var comp *component
	for _, c := range ev.comps {
		msg, err = c.push.Open(body)
		// Several TPs may share a message token and key: a push for another
		// appid is tried against the next component.
		if err == nil || !errors.Is(err, push.ErrSignature) && !errors.Is(err, push.ErrAppID) {
			comp = c
			break
		}
	}
	if err != nil {
		status, reason := http.StatusBadRequest, reasonMalformed
		switch {
		case errors.Is(err, push.ErrSignature):
			status, reason = http.StatusForbidden, reasonSignature
		case errors.Is(err, push.ErrAppID):
			reason = reasonAppID
		}
		label := ev.componentLabel()
		if comp != nil {
			label = comp.appID
		}
		ev.rejectPush(w, r, label, reason, status, "push rejected: "+err.Error(), err)
		return nil
	}
	duplicate, err := comp.engine.HandlePush(r.Context(), msg)
	switch {
	case errors.Is(err, tokensource.ErrPushStale):
		ev.rejectPush(w, r, comp.appID, reasonStale, http.StatusForbidden, "push rejected: "+err.Error(), err)
	case tokensource.KindOf(err) == tokensource.KindBadInput:
		ev.rejectPush(w, r, comp.appID, reasonBadEvent, http.StatusBadRequest, err.Error(), nil)
	case err != nil:
		// Not handled for a reason a retry can fix: the platform retries it.
		ev.logger.Error("push not handled; the platform will retry it", zap.String("component_appid", comp.appID),
			zap.String("event", msg.Kind.String()), zap.String("push_id", msg.ID), zap.Error(err))
		http.Error(w, "temporarily unable to handle the push", http.StatusServiceUnavailable)
	case duplicate:
		// A platform retry of a push already handled (its "success" was lost), or
		// a replay: acknowledged, not acted on again.
		ev.refusals.refused(zap.InfoLevel, comp.appID, kindPush, reasonDuplicate, "push already handled: acknowledged, not acted on again",
			zap.String("event", msg.Kind.String()), zap.String("push_id", msg.ID))
		writeSuccess(w)
	default:
		writeSuccess(w)
	}
	return nil
}

func writeSuccess(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "success")
}

func (ev *Events) redirect(w http.ResponseWriter, r *http.Request) error {
	label := ev.componentLabel()
	q := r.URL.Query()
	code := q.Get("authorization_code")
	if code == "" {
		ev.refusals.refused(zap.DebugLevel, label, kindRedirect, reasonNoCode, "authorization redirect without a code")
		http.Error(w, "missing authorization_code: this URL receives the authorization redirect (and platform pushes by POST)", http.StatusBadRequest)
		return nil
	}
	if len(ev.comps) != 1 {
		ev.refusals.refused(zap.ErrorLevel, label, kindRedirect, reasonConfig, "authorization redirect on a route of several TPs: give tptoken_events a component")
		http.Error(w, "several TPs are configured: give tptoken_events a `component`", http.StatusBadRequest)
		return nil
	}
	comp := ev.comps[0]
	if ev.RequireState {
		if err := comp.state.check(stateOf(r, q), time.Now()); err != nil {
			reason := reasonBadState
			if errors.Is(err, errNoState) {
				reason = reasonNoState
			}
			ev.refusals.refused(zap.InfoLevel, label, kindRedirect, reason, "authorization redirect refused: no valid link state", zap.Error(err))
			ev.page(w, http.StatusForbidden, "Authorization not completed",
				"This address only completes authorizations started from a link this service provider issued, and this one "+
					"is not such a link or has expired ("+err.Error()+"). If you authorized the mini-app, it is not lost: "+
					"the platform notifies the service provider directly. Otherwise ask the service provider for a new link.", 0)
			return nil
		}
	}
	info, err := comp.engine.ExchangeRedirectCode(r.Context(), tokensource.Secret(code))
	if err != nil {
		f := failureOf(err)
		reason, level := redirectReason(err)
		ev.refusals.refused(level, label, kindRedirect, reason, "authorization redirect not completed", zap.Int("status", f.status), zap.Error(err))
		title := "Authorization not completed"
		detail := clientMessage(err)
		if f.status == http.StatusServiceUnavailable {
			title = "Please try again in a moment"
			detail += ". If you authorized the mini-app, it is not lost: the platform also notifies the service provider directly."
		}
		ev.page(w, f.status, title, detail, f.retryAfter)
		return nil
	}
	ev.logger.Debug("authorization redirect handled", zap.String("component_appid", comp.appID), zap.String("appid", info.AppID))
	ev.page(w, http.StatusOK, "Authorization received",
		fmt.Sprintf("Mini-app %s is authorized to %s. Its tokens are stored; you can close this page.", info.AppID, comp.appID), 0)
	return nil
}

// redirectReason names why a redirect exchange did not complete, and how loud
// that is: a merchant's failed code deserves a warning, a flood does not.
func redirectReason(err error) (string, zapcore.Level) {
	switch {
	case errors.Is(err, tokensource.ErrCodeMalformed):
		return reasonMalformedCode, zap.InfoLevel
	case errors.Is(err, tokensource.ErrCodeFailedRecently):
		return reasonFailedRecently, zap.InfoLevel
	case errors.Is(err, tokensource.ErrRedirectBusy):
		return reasonBusy, zap.WarnLevel
	case errors.Is(err, tokensource.ErrRedirectRateLimited):
		return reasonRateLimited, zap.WarnLevel
	case errors.Is(err, tokensource.ErrRedirectExchangeOff):
		return reasonExchangeOff, zap.InfoLevel
	}
	switch tokensource.KindOf(err) {
	case tokensource.KindPlatform, tokensource.KindUnauthorized:
		return reasonExchangeFailed, zap.WarnLevel
	}
	return reasonUnavailable, zap.WarnLevel
}

// page writes the short HTML result page of a redirect.
func (ev *Events) page(w http.ResponseWriter, status int, title, detail string, retryAfter time.Duration) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	if retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((retryAfter+time.Second-1)/time.Second)))
	}
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, "<!doctype html><meta charset=utf-8><title>%s</title><h1>%s</h1><p>%s</p>\n",
		html.EscapeString(title), html.EscapeString(title), html.EscapeString(detail))
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Events)(nil)
	_ caddyhttp.MiddlewareHandler = (*Events)(nil)
	_ caddyfile.Unmarshaler       = (*Events)(nil)
)
