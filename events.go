package tptoken

import (
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

func init() {
	caddy.RegisterModule(Events{})
}

// Events is the `tptoken_events` handler: the TP's 授权事件接收 URL and the
// authorization redirect target.
//
//   - POST: a platform push. It is verified (SHA1 signature, constant time),
//     decrypted, checked to be for this TP, and acted on: a ticket is stored;
//     AUTHORIZED / UPDATE_AUTHORIZED exchange their code at once; UNAUTHORIZED
//     revokes. The answer is exactly `success`. Malformed pushes get a 4xx and
//     change nothing; the platform retries 3 times, and handling is idempotent.
//   - GET with authorization_code: the redirect after a hand-built authorization
//     link. The code is exchanged and a short page (no token) shows the result.
type Events struct {
	// Component selects the TP; "" means every configured component (a push is
	// matched by its signature and appid).
	Component string `json:"component,omitempty"`

	comps  []*component
	logger *zap.Logger
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
	app, err := appFrom(ctx)
	if err != nil {
		return err
	}
	if ev.Component != "" {
		c, err := app.component(ev.Component)
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

func (ev *Events) push(w http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxPushBody+1))
	if err != nil {
		http.Error(w, "cannot read the body", http.StatusBadRequest)
		return nil
	}
	if len(body) > maxPushBody {
		ev.logger.Warn("push rejected: body larger than 64 KiB", zap.Int("limit", maxPushBody))
		http.Error(w, "body larger than 64 KiB", http.StatusRequestEntityTooLarge)
		return nil
	}
	var msg *tokensource.PushMessage
	var comp *component
	for _, c := range ev.comps {
		msg, err = c.push.Open(body)
		// Several TPs may share a message token and key: a push for another
		// appid is tried against the next component.
		if err == nil || !errors.Is(err, tokensource.ErrPushSignature) && !errors.Is(err, tokensource.ErrPushAppID) {
			comp = c
			break
		}
	}
	if err != nil {
		status := http.StatusBadRequest
		if errors.Is(err, tokensource.ErrPushSignature) {
			status = http.StatusForbidden
		}
		ev.logger.Warn("push rejected", zap.Int("status", status), zap.Error(err), zap.String("remote", r.RemoteAddr))
		http.Error(w, "push rejected: "+err.Error(), status)
		return nil
	}
	e := comp.engine
	log := ev.logger.With(zap.String("component_appid", comp.appID), zap.String("event", msg.Kind.String()))
	switch msg.Kind {
	case tokensource.PushTicket:
		err = e.StoreTicket(r.Context(), msg.Ticket, msg.CreateTime)
	case tokensource.PushAuthorized, tokensource.PushUpdateAuthorized:
		if !tokensource.ValidAppID(msg.AppID) || msg.AuthorizationCode == "" {
			log.Warn("push rejected: authorization event without a valid AppId or AuthorizationCode")
			http.Error(w, "authorization event lacks AppId or AuthorizationCode", http.StatusBadRequest)
			return nil
		}
		log = log.With(zap.String("appid", msg.AppID))
		_, err = e.ExchangeCode(r.Context(), msg.AppID, msg.AuthorizationCode, msg.EventTime)
	case tokensource.PushUnauthorized:
		if !tokensource.ValidAppID(msg.AppID) {
			http.Error(w, "UNAUTHORIZED event lacks a valid AppId", http.StatusBadRequest)
			return nil
		}
		log = log.With(zap.String("appid", msg.AppID))
		err = e.Unauthorize(r.Context(), msg.AppID, msg.EventTime)
	default:
		log.Info("push of an unhandled kind acknowledged", zap.String("event_field", msg.Event), zap.String("msg_type", msg.MsgType))
	}
	if err != nil {
		// Transient failures are answered with an error so the platform retries;
		// permanent ones (an expired code) are acknowledged: a retry cannot help.
		switch tokensource.KindOf(err) {
		case tokensource.KindUnavailable, tokensource.KindTimeout, tokensource.KindNoTicket, tokensource.KindInternal:
			log.Error("push not handled; the platform will retry it", zap.Error(err))
			http.Error(w, "temporarily unable to handle the push", http.StatusServiceUnavailable)
			return nil
		}
		log.Error("push handled with an error that a retry cannot fix", zap.Error(err))
	} else {
		log.Info("push handled")
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "success")
	return nil
}

func (ev *Events) redirect(w http.ResponseWriter, r *http.Request) error {
	code := r.URL.Query().Get("authorization_code")
	if code == "" {
		http.Error(w, "missing authorization_code: this URL receives the authorization redirect (and platform pushes by POST)", http.StatusBadRequest)
		return nil
	}
	if len(code) > 512 {
		http.Error(w, "authorization_code too long", http.StatusBadRequest)
		return nil
	}
	if len(ev.comps) != 1 {
		http.Error(w, "several TPs are configured: give tptoken_events a `component`", http.StatusBadRequest)
		return nil
	}
	comp := ev.comps[0]
	info, err := comp.engine.ExchangeCode(r.Context(), "", tokensource.Secret(code), time.Time{})
	status, title, detail := http.StatusOK, "Authorization received", ""
	if err != nil {
		f := failureOf(err)
		status, title, detail = f.status, "Authorization not completed", clientMessage(err)
		ev.logger.Warn("authorization redirect not completed", zap.Error(err))
	} else {
		detail = fmt.Sprintf("Mini-app %s is authorized to %s. Its tokens are stored; you can close this page.", info.AppID, comp.appID)
		ev.logger.Info("authorization redirect handled", zap.String("appid", info.AppID))
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, "<!doctype html><meta charset=utf-8><title>%s</title><h1>%s</h1><p>%s</p>\n",
		html.EscapeString(title), html.EscapeString(title), html.EscapeString(detail))
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Events)(nil)
	_ caddyhttp.MiddlewareHandler = (*Events)(nil)
)
