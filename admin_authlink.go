package tptoken

import (
	"errors"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// POST /tptoken/auth-link[?component=<appid>]: an authorization link for a
// merchant, whose redirect_uri carries a signed, expiring state (authstate.go)
// that tptoken_events checks (and, with require_state, demands).
//
//	{"redirect_uri": "https://tp-events.example.com/", "method": "pre_auth_code"|"gen_link",
//	 "link_type": 1|2, "app_name": "...", "app_icon": "...", "state": "path"|"query"|"none"}

// authLinkRequest is the body of POST /tptoken/auth-link.
type authLinkRequest struct {
	RedirectURI string `json:"redirect_uri"`
	Method      string `json:"method,omitempty"`    // pre_auth_code (default) | gen_link
	LinkType    int    `json:"link_type,omitempty"` // 1 (default) | 2
	AppName     string `json:"app_name,omitempty"`
	AppIcon     string `json:"app_icon,omitempty"`
	State       string `json:"state,omitempty"` // where the state goes: path (default) | query | none
}

// authLinkAnswer is its answer.
type authLinkAnswer struct {
	ComponentAppID string    `json:"component_appid"`
	Method         string    `json:"method"`
	Link           string    `json:"link"`
	RedirectURI    string    `json:"redirect_uri,omitempty"` // as given to the platform, with the state
	ExpiresAt      time.Time `json:"expires_at"`
	StateExpiresAt time.Time `json:"state_expires_at,omitzero"`
}

// documentedLinkLife is how long the platform says a link works:
// pre_auth_code type 1 10 minutes, type 2 24 hours; gen_link 24 hours.
func documentedLinkLife(method string, linkType int) time.Duration {
	if method == tokensource.LinkPreAuthCode && linkType != 2 {
		return 10 * time.Minute
	}
	return tokensource.GenLinkLife
}

func (a *adminAPI) authLink(w http.ResponseWriter, r *http.Request) error {
	if err := allowMethods(w, r, http.MethodPost); err != nil {
		return err
	}
	c, err := a.pick(r)
	if err != nil {
		return err
	}
	var req authLinkRequest
	if err := readBody(w, r, maxAdminBody, &req); err != nil {
		return err
	}
	if req.Method == "" {
		req.Method = tokensource.LinkPreAuthCode
	}
	if req.State == "" {
		req.State = "path"
	}
	now := time.Now()
	ans := authLinkAnswer{ComponentAppID: c.appID, Method: req.Method, RedirectURI: req.RedirectURI}
	if req.State != "none" {
		if req.RedirectURI == "" {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest,
				Err: errors.New(`redirect_uri is required to carry the state (the tptoken_events site on the TP's 授权域名), or set "state": "none"`)}
		}
		ans.StateExpiresAt = now.Add(documentedLinkLife(req.Method, req.LinkType) + stateSlack).Truncate(time.Second)
		ans.RedirectURI, err = withState(req.RedirectURI, c.state.sign(ans.StateExpiresAt), req.State)
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
		}
	}
	link, life, err := c.engine.AuthorizationLink(r.Context(), tokensource.LinkRequest{Method: req.Method, LinkType: req.LinkType,
		AppName: req.AppName, AppIcon: req.AppIcon, RedirectURI: ans.RedirectURI})
	if err != nil {
		return apiError(w, err)
	}
	ans.Link, ans.ExpiresAt = link, now.Add(life).Truncate(time.Second)
	a.log.Info("authorization link made", zap.String("component_appid", c.appID), zap.String("method", req.Method), zap.Time("expires_at", ans.ExpiresAt))
	return writeJSON(w, ans)
}
