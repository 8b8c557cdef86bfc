package tptoken

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// Routes that inject an app's own token (token client_token |
// app_access_token): the app is fixed by `app <appid>` (or is the only one
// keeping the kind), or named by each request through an appid carrier; the
// token goes where the route's APIs take it (inject).

// InjectPlace is where a route puts an app token.
type InjectPlace struct {
	// In is header, query or body (a top-level field of a JSON object body).
	In string `json:"in"`
	// Name is the header, query parameter or field name.
	Name string `json:"name"`
}

// defaultInjectName is the name each place takes by default: the platform's
// APIs take the token as header access-token (open.douyin.com and most
// developer.toutiao.com APIs), or as access_token in a query or a JSON body
// (docs/protocol.md §App credentials).
var defaultInjectName = map[string]string{injectHeader: "access-token", injectQuery: "access_token", injectBody: "access_token"}

// appTarget is one app token as a route injects it.
type appTarget struct {
	*appToken
	place placement
}

// placement is an InjectPlace made ready for the request path.
type placement struct {
	in   string
	name string // header: canonical key
}

func newPlacement(p *InjectPlace) placement {
	if p == nil {
		return placement{in: injectHeader, name: http.CanonicalHeaderKey(defaultInjectName[injectHeader])}
	}
	pl := placement{in: p.In, name: p.Name}
	if p.In == injectHeader {
		pl.name = http.CanonicalHeaderKey(p.Name)
	}
	return pl
}

// provisionAppRoute finds the route's app token(s).
func (h *Handler) provisionAppRoute(app *App) error {
	h.appKind = h.Token
	if h.Inject != nil {
		if h.Inject.Name == "" {
			h.Inject.Name = defaultInjectName[h.Inject.In]
		}
		if err := checkInject(h.Inject); err != nil {
			return err
		}
		if h.Inject.In == injectBody && h.MaxReplayBody < 0 {
			return errors.New("inject body needs the request body in memory: max_replay_body must not be off")
		}
	}
	place := newPlacement(h.Inject)
	if !h.takeCarrier {
		t, err := app.appToken(h.App, h.Token)
		if err != nil {
			return err
		}
		h.fixedApp = &appTarget{appToken: t, place: place}
		return nil
	}
	ts := app.appTokensOf(h.Token)
	if len(ts) == 0 {
		_, err := app.appToken("", h.Token) // says what to add
		return err
	}
	h.appsByID = make(map[string]*appTarget, len(ts))
	for _, t := range ts {
		h.appsByID[t.appID] = &appTarget{appToken: t, place: place}
	}
	return nil
}

// errUnknownApp answers an app id (from the request) that is not configured
// with the route's kind: no platform call is made for it.
type errUnknownApp struct{ appid, kind string }

func (e errUnknownApp) Error() string {
	return "app " + e.appid + ": no " + e.kind + " is configured for it in the tptoken app"
}

// appToken resolves the request's app and its token into inj. A route that
// puts the token in the body reads the body first: a body the token cannot
// be put in is refused before any fetch.
func (h *Handler) appToken(r *http.Request, repl *caddy.Replacer, inj *injection) error {
	t := h.fixedApp
	if t == nil {
		switch {
		case inj.appid == "":
			return &tokensource.Error{Kind: tokensource.KindBadAppID, Msg: "no app id in the request: send it " + h.carrierHint()}
		case !tokensource.ValidAppID(inj.appid):
			return tokensource.CheckAppID(inj.appid)
		}
		if t = h.appsByID[inj.appid]; t == nil {
			// from the token slot, the value may be the client's old token: not echoed (tokenslot.go)
			return h.unconfirmed(errUnknownApp{inj.appid, h.appKind}, inj.appid)
		}
	} else {
		inj.appid = t.appID
	}
	if h.slot || !h.takeCarrier { // a carrier's appid is shown already (ServeHTTP)
		h.showAppID(repl, t.appID)
	}
	inj.app = t
	if t.place.in == injectBody {
		if err := inj.checkBody(r, h); err != nil {
			return err
		}
	}
	var err error
	inj.tok, err = t.src.Token(r.Context())
	return err
}

// checkBody reads the body of a route that puts the token in it: it must be
// a JSON object (or empty) within max_replay_body.
func (inj *injection) checkBody(r *http.Request, h *Handler) error {
	body, _ := inj.requestBody(r, h.logger)
	switch {
	case body == nil && (r.Body == nil || r.Body == http.NoBody):
		return nil
	case body != nil && body.complete:
		if _, err := withBodyToken(body.buf, inj.app.place.name, ""); err != nil {
			return &tokensource.Error{Kind: tokensource.KindBadInput, Msg: "inject body: the request body " + err.Error()}
		}
		return nil
	case r.ContentLength > h.MaxReplayBody || int64(len(inj.prefix)) > h.MaxReplayBody:
		return &tokensource.Error{Kind: tokensource.KindBadInput,
			Msg: fmt.Sprintf("inject body: the request body is larger than max_replay_body (%d bytes): the token cannot be put in it", h.MaxReplayBody)}
	}
	return &tokensource.Error{Kind: tokensource.KindUnavailable, RetryAfter: time.Second,
		Msg: "inject body: the request body could not be held in memory (max_replay_memory is taken by requests in flight, or the body broke off)"}
}

// failureEnvelope adds what an app route's failure answer carries beyond the
// v2 envelope: err_tips (the app token endpoint's message field) and the kind.
func (h *Handler) failureEnvelope(body, detail map[string]any, msg string) {
	if h.appKind == "" {
		return
	}
	body["err_tips"] = msg
	detail["token"] = h.appKind
}

// owner is the label of the route's metrics: the component appid, or the app's.
func (inj *injection) owner() string {
	if inj.app != nil {
		return inj.app.appID
	}
	return inj.comp.appID
}

// kind is the route's token kind, as in metric labels.
func (inj *injection) kind() string {
	switch {
	case inj.app != nil:
		return inj.app.kind
	case inj.component:
		return "component"
	}
	return "authorizer"
}

// countNotInjected counts a request refused for want of `transport tptoken`.
func (h *Handler) countNotInjected(inj *injection) {
	defaultMetrics().notInjected.WithLabelValues(inj.owner()).Inc()
}
