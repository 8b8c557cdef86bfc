package tokensource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The kinds of an app's own token (AppConfig.Kind), as named in storage
// keys, logs and metrics (docs/protocol.md §App credentials).
const (
	// AppAccessToken is a mini-app's (or mini-game's) access_token, fetched
	// with its appid and AppSecret: for the developer.toutiao.com APIs.
	AppAccessToken = "app_access_token"
	// ClientToken is an app's client_token (应用授权调用凭证), fetched with
	// its client_key (a mini-app's appid) and secret: for the
	// open.douyin.com APIs.
	ClientToken = "client_token"
)

// appEndpoint is one kind's token endpoint: where, which body fields carry
// the credentials, and what its codes mean. Codes are the endpoint's own:
// 40020 there means a wrong grant_type, not an invalid authorizer token.
type appEndpoint struct {
	defaultBase          string
	path                 string
	idField, secretField string
	codes                map[int]class
}

var appEndpoints = map[string]appEndpoint{
	AppAccessToken: {
		defaultBase: "https://developer.toutiao.com", path: "/api/apps/v2/token",
		idField: "appid", secretField: "secret",
		codes: map[int]class{
			-1:    classRetryable,          // 系统错误
			40015: classCredentialsRefused, // appid 错误
			40017: classCredentialsRefused, // secret 错误
		},
	},
	ClientToken: {
		defaultBase: "https://open.douyin.com", path: "/oauth/client_token/",
		idField: "client_key", secretField: "client_secret",
		codes: map[int]class{
			10003: classCredentialsRefused, // client_key 错误 / 配置无效
			10013: classCredentialsRefused, // client_key 或 client_secret 错误
			10020: classRateLimited,        // more than 500 fetches in 5 minutes
		},
	},
}

// AppKindEndpoint is the base URL of kind's token endpoint when none is
// configured: the platform host whose APIs take that token ("" for an
// unknown kind).
func AppKindEndpoint(kind string) string { return appEndpoints[kind].defaultBase }

// appClient fetches one kind of an app's token: one HTTP call per fetch. The
// secret travels in the request body only, and no error holds it.
type appClient struct {
	caller
	kind   string
	ep     appEndpoint
	appID  string
	secret Secret
}

func newAppClient(kind, endpoint, appID string, secret Secret, hc *http.Client, timeout time.Duration) (*appClient, error) {
	ep, ok := appEndpoints[kind]
	if !ok {
		return nil, fmt.Errorf("app token kind %q: use %s or %s", kind, ClientToken, AppAccessToken)
	}
	if endpoint == "" {
		endpoint = ep.defaultBase
	}
	base, err := url.Parse(strings.TrimRight(endpoint, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" || base.RawQuery != "" {
		return nil, fmt.Errorf("%s endpoint %q: want an absolute http(s) URL such as %s", kind, endpoint, ep.defaultBase)
	}
	if !ValidAppID(appID) {
		return nil, fmt.Errorf("app %q: want 1-64 letters, digits, '_' or '-'", appID)
	}
	if secret == "" {
		return nil, fmt.Errorf("app %s: the secret is empty", appID)
	}
	return &appClient{caller: newCaller(base, hc, timeout), kind: kind, ep: ep, appID: appID, secret: secret}, nil
}

// fetch asks for a new token. Each successful fetch is a new token at the
// platform, which cuts the previous one short (docs/protocol.md §App credentials).
func (c *appClient) fetch(ctx context.Context) (Secret, time.Duration, error) {
	body, err := json.Marshal(map[string]string{
		c.ep.idField: c.appID, c.ep.secretField: c.secret.Reveal(), "grant_type": "client_credential",
	})
	if err != nil {
		return "", 0, err
	}
	var out struct {
		Token     string  `json:"access_token"`
		ExpiresIn flexInt `json:"expires_in"` // a number, or (in the official SDK's types) a string
	}
	if err := c.do(ctx, c.kind, http.MethodPost, c.ep.path, nil, "", body, &out); err != nil {
		return "", 0, c.classified(err)
	}
	if out.Token == "" || out.ExpiresIn <= 0 {
		return "", 0, &PlatformError{Op: c.kind, HTTPStatus: http.StatusOK, Message: "answer lacks access_token or expires_in", classified: true}
	}
	return Secret(out.Token), time.Duration(out.ExpiresIn) * time.Second, nil
}

// classified gives a platform answer its class from the endpoint's table
// (unknown codes: fail, no retry), HTTP 429 rate_limited, 5xx retryable.
// Other failures (timeouts, connections) keep the global classification.
func (c *appClient) classified(err error) error {
	var pe *PlatformError
	if !errors.As(err, &pe) {
		return err
	}
	if s := c.secret.Reveal(); strings.Contains(pe.Message, s) {
		pe.Message = strings.ReplaceAll(pe.Message, s, "[secret]")
	}
	pe.classified = true
	switch {
	case pe.Code != 0:
		pe.cls = c.ep.codes[pe.Code]
	case pe.HTTPStatus == http.StatusTooManyRequests:
		pe.cls = classRateLimited
	case pe.HTTPStatus >= 500:
		pe.cls = classRetryable
	default:
		pe.cls = classOther
	}
	return err
}
