package tokensource

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Authorization links (docs/protocol.md, section "Authorization links"): a
// merchant opens one to authorize a mini-app to the TP, and the platform then
// sends the browser to the link's redirect_uri with authorization_code.

// Link methods.
const (
	// LinkPreAuthCode: get a pre_auth_code and build the link by hand (手动构造授权链接).
	LinkPreAuthCode = "pre_auth_code"
	// LinkGenLink: ask the platform for the link (直接获取授权链接).
	LinkGenLink = "gen_link"
)

// Operation names of the link calls (errors, logs, metrics).
const (
	OpPreAuthCode = "pre_auth_code"
	OpGenLink     = "gen_link"
)

// GenLinkLife is how long a link from gen_link works (the platform's documented 24 h).
const GenLinkLife = 24 * time.Hour

// LinkRequest asks for an authorization link.
type LinkRequest struct {
	Method      string // LinkPreAuthCode (default) or LinkGenLink
	LinkType    int    // 1 (default): authorize an existing mini-app; 2: create one (代创建) and authorize it
	AppName     string // the name of the mini-app to create; required with LinkType 2
	AppIcon     string // its icon (a path from the platform's upload API); optional
	RedirectURI string // where the platform sends the browser; required for LinkPreAuthCode
}

// AuthorizationLink asks the platform for an authorization link, and says how
// long it works. The link is meant for a merchant: it is not a secret, but it
// lets whoever opens it authorize a mini-app to this TP, so it is returned and
// never logged.
func (e *Engine) AuthorizationLink(ctx context.Context, req LinkRequest) (link string, expiresIn time.Duration, err error) {
	if req.Method == "" {
		req.Method = LinkPreAuthCode
	}
	if req.LinkType == 0 {
		req.LinkType = 1
	}
	switch {
	case req.Method != LinkPreAuthCode && req.Method != LinkGenLink:
		return "", 0, &Error{Kind: KindBadInput, Msg: fmt.Sprintf("method %q: use %s or %s", req.Method, LinkPreAuthCode, LinkGenLink)}
	case req.LinkType != 1 && req.LinkType != 2:
		return "", 0, &Error{Kind: KindBadInput, Msg: fmt.Sprintf("link_type %d: use 1 (authorize an existing mini-app) or 2 (create one and authorize it)", req.LinkType)}
	case req.LinkType == 2 && strings.TrimSpace(req.AppName) == "":
		return "", 0, &Error{Kind: KindBadInput, Msg: "link_type 2 creates a mini-app: app_name is required"}
	case req.Method == LinkPreAuthCode && req.RedirectURI == "":
		return "", 0, &Error{Kind: KindBadInput, Msg: "a hand-built link needs redirect_uri (the tptoken_events site, on the TP's 授权域名)"}
	}
	if req.RedirectURI != "" {
		if u, err := url.Parse(req.RedirectURI); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Fragment != "" {
			return "", 0, &Error{Kind: KindBadInput, Msg: "redirect_uri: want an absolute http(s) URL without #fragment on the TP's 授权域名"}
		}
	}
	octx, done, err := e.begin()
	if err != nil {
		return "", 0, err
	}
	defer done()
	err = e.withComponentToken(octx, func(ct Secret) error {
		return e.retry(octx, func(ctx context.Context) error {
			t0 := time.Now()
			op := req.Method
			var err error
			if req.Method == LinkGenLink {
				link, err = e.client.GenLink(ctx, ct, req)
				expiresIn = GenLinkLife
			} else {
				var code string
				code, expiresIn, err = e.client.PreAuthCode(ctx, ct, req)
				if err == nil {
					link = e.client.handBuiltLink(code, req.RedirectURI)
				}
			}
			e.logCall(op, "", t0, err)
			return err
		})
	})
	if err != nil {
		return "", 0, e.unavailable("", err, e.cfg.RetryBase)
	}
	return link, expiresIn, nil
}

// linkBody is the JSON body of pre_auth_code and gen_link.
type linkBody struct {
	PreAuthCodeType int    `json:"pre_auth_code_type,omitempty"`
	LinkType        int    `json:"link_type,omitempty"`
	AppName         string `json:"app_name,omitempty"`
	AppIcon         string `json:"app_icon,omitempty"`
	RedirectURI     string `json:"redirect_uri,omitempty"`
}

// PreAuthCode gets a pre_auth_code (获取预授权码): v1 POST
// /openapi/v2/auth/pre_auth_code (on the legacy host), v2 POST
// /api/tpapp/v3/auth/get_pre_auth_code/.
func (c *client) PreAuthCode(ctx context.Context, componentToken Secret, req LinkRequest) (string, time.Duration, error) {
	body, _ := json.Marshal(linkBody{PreAuthCodeType: req.LinkType, AppName: req.AppName, AppIcon: req.AppIcon})
	var out struct {
		Code      string  `json:"pre_auth_code"`
		ExpiresIn flexInt `json:"expires_in"`
	}
	if err := c.linkCall(ctx, OpPreAuthCode, "/openapi/v2/auth/pre_auth_code", "/api/tpapp/v3/auth/get_pre_auth_code/", componentToken, body, &out); err != nil {
		return "", 0, err
	}
	if out.Code == "" {
		return "", 0, &PlatformError{Op: OpPreAuthCode, HTTPStatus: 200, Message: "answer lacks pre_auth_code"}
	}
	life := time.Duration(out.ExpiresIn) * time.Second
	if life <= 0 {
		life = 10 * time.Minute // the documented life of a type 1 code
	}
	return out.Code, life, nil
}

// GenLink asks for an authorization link (直接获取授权链接): v1 POST
// /openapi/v2/auth/gen_link (legacy host), v2 POST /api/tpapp/v3/auth/gen_link/.
func (c *client) GenLink(ctx context.Context, componentToken Secret, req LinkRequest) (string, error) {
	body, _ := json.Marshal(linkBody{LinkType: req.LinkType, AppName: req.AppName, AppIcon: req.AppIcon, RedirectURI: req.RedirectURI})
	var out struct {
		Link string `json:"link"`
	}
	if err := c.linkCall(ctx, OpGenLink, "/openapi/v2/auth/gen_link", "/api/tpapp/v3/auth/gen_link/", componentToken, body, &out); err != nil {
		return "", err
	}
	if out.Link == "" {
		return "", &PlatformError{Op: OpGenLink, HTTPStatus: 200, Message: "answer lacks link"}
	}
	return out.Link, nil
}

func (c *client) linkCall(ctx context.Context, op, v1Path, v2Path string, componentToken Secret, body []byte, out any) error {
	if c.family == V2 {
		return c.do(ctx, op, http.MethodPost, v2Path, nil, componentToken.Reveal(), body, out)
	}
	q := url.Values{}
	q.Set("component_appid", c.appID)
	q.Set("component_access_token", componentToken.Reveal())
	return c.do(ctx, op, http.MethodPost, v1Path, q, "", body, out)
}

// AuthorizationPage is the page a hand-built link opens: /mappconsole/tp/authorization
// on the v1 host, the only one documented (for both families); with an
// endpoint other than a family default (an emulator), on that endpoint.
const AuthorizationPage = "/mappconsole/tp/authorization"

func (c *client) handBuiltLink(preAuthCode, redirectURI string) string {
	base := strings.TrimRight(c.base.String(), "/")
	if base == strings.TrimRight(V2.DefaultEndpoint(), "/") {
		base = strings.TrimRight(V1.DefaultEndpoint(), "/")
	}
	q := url.Values{}
	q.Set("component_appid", c.appID)
	q.Set("pre_auth_code", preAuthCode)
	q.Set("redirect_uri", redirectURI)
	return base + AuthorizationPage + "?" + q.Encode()
}
