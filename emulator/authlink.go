package emulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

// Authorization links (docs/protocol.md, "Authorization links"): pre_auth_code and gen_link in both
// families, and the authorization page a link opens. The page stands in for
// the merchant: GET it with the emulator-only parameter emulator_appid=<appid>
// (or call FollowAuthLink) and it authorizes that mini-app, then answers 302 to
// the link's redirect_uri with authorization_code and expires_in added to the
// redirect_uri's own query. The platform's docs do not say what it keeps of
// that query; the emulator keeps all of it.

// Paths of the link endpoints and of the authorization page.
const (
	PathV1PreAuthCode     = "/openapi/v2/auth/pre_auth_code" // the v1 family, on the legacy host, under "v2"
	PathV1GenLink         = "/openapi/v2/auth/gen_link"
	PathV2PreAuthCode     = "/api/tpapp/v3/auth/get_pre_auth_code/"
	PathV2GenLink         = "/api/tpapp/v3/auth/gen_link/"
	PathAuthorizationPage = tokensource.AuthorizationPage
)

// Operations of the link endpoints (SetFaults, Stats.Calls).
const (
	OpPreAuthCode = "pre_auth_code"
	OpGenLink     = "gen_link"
)

// Lives of pre-auth codes and links.
const (
	preAuthLife     = 10 * time.Minute
	preAuthLifeFull = 24 * time.Hour // 代创建 codes and gen_link links
)

// ErrBadAuthLink: the link is not one this emulator issued, or is used or expired.
var ErrBadAuthLink = errors.New("emulator: not a valid authorization link")

func init() {
	routes[PathV1PreAuthCode] = route{tokensource.V1, styleBare, fixedOp(OpPreAuthCode), (*Emulator).preAuthCode}
	routes[PathV1GenLink] = route{tokensource.V1, styleBare, fixedOp(OpGenLink), (*Emulator).genLink}
	routes[PathV2PreAuthCode] = route{tokensource.V2, styleV2Envelope, fixedOp(OpPreAuthCode), (*Emulator).preAuthCode}
	routes[PathV2GenLink] = route{tokensource.V2, styleV2Envelope, fixedOp(OpGenLink), (*Emulator).genLink}
	knownOps[OpPreAuthCode] = true
	knownOps[OpGenLink] = true
}

// preAuth is an issued pre_auth_code.
type preAuth struct {
	expiry time.Time
	used   bool
}

// linkRequest is the body of pre_auth_code and gen_link.
type linkRequest struct {
	PreAuthCodeType int    `json:"pre_auth_code_type"`
	LinkType        int    `json:"link_type"`
	AppName         string `json:"app_name"`
	AppIcon         string `json:"app_icon"`
	RedirectURI     string `json:"redirect_uri"`
}

func (e *Emulator) readLinkRequest(c *call, typ func(linkRequest) int) (linkRequest, *apiError) {
	var b linkRequest
	if len(c.body) > 0 && json.Unmarshal(c.body, &b) != nil {
		return b, apiErr(ErrnoParam, "参数错误: body must be JSON")
	}
	switch t := typ(b); t {
	case 0, 1:
	case 2:
		if strings.TrimSpace(b.AppName) == "" {
			return b, apiErr(40059, "代创建小程序名称不允许为空")
		}
	default:
		return b, apiErr(ErrnoParam, "参数错误: unknown type %d", t)
	}
	return b, nil
}

func (e *Emulator) newPreAuthLocked(now time.Time, life time.Duration) string {
	if e.preAuth == nil {
		e.preAuth = map[string]*preAuth{}
	}
	v := e.mintLocked("pre_auth_code")
	// A pre_auth_code goes to merchants inside a link: not a secret to hunt in logs.
	e.issued = e.issued[:len(e.issued)-1]
	e.preAuth[v] = &preAuth{expiry: now.Add(life)}
	return v
}

// preAuthCode is 获取预授权码 (both families).
func (e *Emulator) preAuthCode(c *call) (any, *apiError) {
	if err := e.checkComponentLocked(c); err != nil {
		return nil, err
	}
	b, aerr := e.readLinkRequest(c, func(b linkRequest) int { return b.PreAuthCodeType })
	if aerr != nil {
		return nil, aerr
	}
	life := preAuthLife
	if b.PreAuthCodeType == 2 {
		life = preAuthLifeFull
	}
	v := e.newPreAuthLocked(c.now, life)
	e.log.Info("pre_auth_code issued", zap.String("family", string(c.family)))
	return map[string]any{"pre_auth_code": v, "expires_in": seconds(life)}, nil
}

// genLink is 直接获取授权链接 (both families): a link to this emulator's
// authorization page, valid 24 hours.
func (e *Emulator) genLink(c *call) (any, *apiError) {
	if err := e.checkComponentLocked(c); err != nil {
		return nil, err
	}
	b, aerr := e.readLinkRequest(c, func(b linkRequest) int { return b.LinkType })
	if aerr != nil {
		return nil, aerr
	}
	scheme := "http"
	if c.r.TLS != nil {
		scheme = "https"
	}
	q := url.Values{"component_appid": {e.appid}, "pre_auth_code": {e.newPreAuthLocked(c.now, preAuthLifeFull)}}
	if b.RedirectURI != "" {
		q.Set("redirect_uri", b.RedirectURI)
	}
	e.log.Info("authorization link issued", zap.String("family", string(c.family)))
	return map[string]any{"link": scheme + "://" + c.r.Host + PathAuthorizationPage + "?" + q.Encode()}, nil
}

// FollowAuthLink does what a merchant does with an authorization link: it
// authorizes appid through the link (once: the link's pre_auth_code is then
// used) and returns where the platform sends the browser, the link's
// redirect_uri with authorization_code and expires_in ("" when the link has no
// redirect_uri). With sendPush it also sends the AUTHORIZED push, synchronously.
func (e *Emulator) FollowAuthLink(link, appid string, sendPush bool) (string, error) {
	redirect, p, err := e.followLink(link, appid)
	if err != nil || !sendPush {
		return redirect, err
	}
	return redirect, e.pushOnce(e.ctx, appid, "AUTHORIZED", p)
}

func (e *Emulator) followLink(link, appid string) (string, authPayload, error) {
	if !tokensource.ValidAppID(appid) {
		return "", authPayload{}, fmt.Errorf("emulator: invalid authorizer appid %q", appid)
	}
	u, err := url.Parse(link)
	if err != nil || u.Path != PathAuthorizationPage {
		return "", authPayload{}, fmt.Errorf("%w: not a link to %s", ErrBadAuthLink, PathAuthorizationPage)
	}
	q := u.Query()
	e.mu.Lock()
	now := e.now()
	pa := e.preAuth[q.Get("pre_auth_code")]
	switch {
	case q.Get("component_appid") != e.appid:
		e.mu.Unlock()
		return "", authPayload{}, fmt.Errorf("%w: for another TP", ErrBadAuthLink)
	case pa == nil || pa.used || !now.Before(pa.expiry):
		e.mu.Unlock()
		return "", authPayload{}, fmt.Errorf("%w: unknown, used or expired pre_auth_code", ErrBadAuthLink)
	}
	pa.used = true
	e.authorizeLocked(appid, now)
	code, ttl := e.newCodeLocked(appid, now)
	e.mu.Unlock()
	e.log.Info("authorized through a link", zap.String("appid", appid))
	p := authPayload{AppID: appid, TpAppID: e.appid, EventTime: push.FormatTime(now), Event: "AUTHORIZED",
		AuthorizationCode: code, AuthorizationCodeExpiresIn: seconds(ttl)}
	ru := q.Get("redirect_uri")
	if ru == "" {
		return "", p, nil
	}
	r, err := url.Parse(ru)
	if err != nil {
		return "", p, fmt.Errorf("%w: redirect_uri is not a URL", ErrBadAuthLink)
	}
	rq := r.Query()
	rq.Set("authorization_code", code)
	rq.Set("expires_in", fmt.Sprint(seconds(ttl)))
	r.RawQuery = rq.Encode()
	return r.String(), p, nil
}

// serveAuthorizationPage is the page a link opens; emulator_appid says which
// mini-app the emulated merchant authorizes. The AUTHORIZED push follows in
// the background, as on the platform.
func (e *Emulator) serveAuthorizationPage(w http.ResponseWriter, r *http.Request) {
	page := func(status int, msg string) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(status)
		fmt.Fprintf(w, "<!doctype html><meta charset=utf-8><title>tptoken emulator</title><p>%s</p>\n", html.EscapeString(msg))
	}
	appid := r.URL.Query().Get("emulator_appid")
	if appid == "" {
		page(http.StatusOK, "tptoken emulator: authorization page. Add emulator_appid=<appid> to this URL to authorize that mini-app.")
		return
	}
	redirect, p, err := e.followLink(r.URL.String(), appid)
	if err != nil {
		page(http.StatusBadRequest, err.Error())
		return
	}
	e.mu.Lock()
	hasURL := e.pushURL != ""
	e.mu.Unlock()
	if hasURL {
		e.goPushRetrying(appid, p)
	}
	if redirect == "" {
		page(http.StatusOK, "Authorized "+appid+". The link had no redirect_uri.")
		return
	}
	http.Redirect(w, r, redirect, http.StatusFound)
}
