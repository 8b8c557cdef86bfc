package tokensource

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// clientConfig configures a platform client (Config's platform fields).
type clientConfig struct {
	Family          Family
	Endpoint        string // base URL; "" means the family's default
	ComponentAppID  string
	ComponentSecret Secret
	HTTPClient      *http.Client  // nil means a client with sane transport timeouts
	Timeout         time.Duration // per call; 0 means defaultCallTimeout
}

// defaultCallTimeout bounds one platform call.
const defaultCallTimeout = 10 * time.Second

// maxResponseBody bounds what is read of a platform answer.
const maxResponseBody = 1 << 20

// client calls the platform's token endpoints of one family. It makes exactly one
// HTTP call per method call: retries, locking and bookkeeping are the engine's.
// Its errors never contain a URL query, a token or a secret. Its methods are
// named after the platform operations they call.
type client struct {
	caller
	family Family
	appID  string
	secret Secret
}

// caller makes one HTTP call to a platform host and reads its answer, in any
// of the platform's envelopes. The TP's token API (client) and the app token
// endpoints (appClient) use it.
type caller struct {
	base      *url.URL
	http      *http.Client
	timeout   time.Duration
	userAgent string
}

// newClient checks the configuration and returns a client.
func newClient(cfg clientConfig) (*client, error) {
	if cfg.Family == "" {
		cfg.Family = V1
	}
	if cfg.Family != V1 && cfg.Family != V2 {
		return nil, fmt.Errorf("unknown api family %q: use v1 or v2", cfg.Family)
	}
	if cfg.Endpoint == "" {
		cfg.Endpoint = cfg.Family.DefaultEndpoint()
	}
	base, err := url.Parse(strings.TrimRight(cfg.Endpoint, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("endpoint %q: want an absolute http(s) URL such as %s", cfg.Endpoint, cfg.Family.DefaultEndpoint())
	}
	if !ValidAppID(cfg.ComponentAppID) {
		return nil, fmt.Errorf("component_appid %q: want 1-64 letters, digits, '_' or '-'", cfg.ComponentAppID)
	}
	if cfg.ComponentSecret == "" {
		return nil, errors.New("component_appsecret is empty: set it (for example {env.TP_COMPONENT_APPSECRET})")
	}
	return &client{
		caller: newCaller(base, cfg.HTTPClient, cfg.Timeout),
		family: cfg.Family, appID: cfg.ComponentAppID, secret: cfg.ComponentSecret,
	}, nil
}

// newCaller is a caller of base; hc nil means a client with sane transport
// timeouts, timeout 0 defaultCallTimeout.
func newCaller(base *url.URL, hc *http.Client, timeout time.Duration) caller {
	if hc == nil {
		hc = &http.Client{Transport: defaultTransport()}
	}
	if timeout <= 0 {
		timeout = defaultCallTimeout
	}
	return caller{base: base, http: hc, timeout: timeout, userAgent: "tptoken"}
}

func defaultTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = defaultCallTimeout
	t.MaxIdleConnsPerHost = 16
	return t
}

// componentGrant is a component_access_token answer.
type componentGrant struct {
	Token     Secret
	ExpiresIn time.Duration
}

// grant is the answer of a code exchange or a refresh.
type grant struct {
	AccessToken      Secret
	ExpiresIn        time.Duration
	RefreshToken     Secret
	RefreshExpiresIn time.Duration
	AppID            string // authorizer_appid (exchange answers carry it)
	Permissions      []Permission
}

// authorizedApp is one entry of the authorized app list.
type authorizedApp struct {
	AppID    string    `json:"appid"`
	AuthTime time.Time `json:"auth_time"`
}

// Operation names, used in errors, logs and metrics.
const (
	OpComponentToken = "component_token"
	OpExchange       = "exchange"
	OpRefresh        = "refresh"
	OpRetrieve       = "retrieve"
	OpAppList        = "app_list"
)

// ComponentToken fetches a component_access_token with the latest ticket.
// v2 fetches invalidate the previous token after a grace period: serialize them.
func (c *client) ComponentToken(ctx context.Context, ticket Secret) (componentGrant, error) {
	path := "/openapi/v1/auth/tp/token"
	if c.family == V2 {
		path = "/openapi/v2/auth/tp/token/"
	}
	q := url.Values{}
	q.Set("component_appid", c.appID)
	q.Set("component_appsecret", c.secret.Reveal())
	q.Set("component_ticket", ticket.Reveal())
	var out struct {
		Token     string  `json:"component_access_token"`
		ExpiresIn flexInt `json:"expires_in"`
	}
	if err := c.do(ctx, OpComponentToken, http.MethodGet, path, q, "", nil, &out); err != nil {
		return componentGrant{}, err
	}
	if out.Token == "" || out.ExpiresIn <= 0 {
		return componentGrant{}, &PlatformError{Op: OpComponentToken, HTTPStatus: 200, Message: "answer lacks component_access_token or expires_in"}
	}
	return componentGrant{Token: Secret(out.Token), ExpiresIn: time.Duration(out.ExpiresIn) * time.Second}, nil
}

// ExchangeCode swaps an authorization code for the authorizer's first token pair.
func (c *client) ExchangeCode(ctx context.Context, componentToken, code Secret) (grant, error) {
	return c.grant(ctx, OpExchange, componentToken, "app_to_tp_authorization_code", "authorization_code", code)
}

// Refresh uses a refresh token. The refresh token is single-use: whatever the
// outcome of this call, the caller must assume it may be spent.
func (c *client) Refresh(ctx context.Context, componentToken, refreshToken Secret) (grant, error) {
	return c.grant(ctx, OpRefresh, componentToken, "app_to_tp_refresh_token", "authorizer_refresh_token", refreshToken)
}

func (c *client) grant(ctx context.Context, op string, componentToken Secret, grantType, field string, value Secret) (grant, error) {
	q := url.Values{}
	var path, header string
	if c.family == V2 {
		path = "/api/tpapp/v2/auth/get_auth_token/"
		header = componentToken.Reveal()
	} else {
		path = "/openapi/v1/oauth/token"
		q.Set("component_appid", c.appID)
		q.Set("component_access_token", componentToken.Reveal())
	}
	q.Set("grant_type", grantType)
	q.Set(field, value.Reveal())
	var out struct {
		AccessToken      string       `json:"authorizer_access_token"`
		ExpiresIn        flexInt      `json:"expires_in"`
		RefreshToken     string       `json:"authorizer_refresh_token"`
		RefreshExpiresIn flexInt      `json:"refresh_expires_in"`
		AppID            string       `json:"authorizer_appid"`
		Permissions      []Permission `json:"authorize_permission"`
	}
	if err := c.do(ctx, op, http.MethodGet, path, q, header, nil, &out); err != nil {
		return grant{}, err
	}
	if out.AccessToken == "" || out.RefreshToken == "" || out.ExpiresIn <= 0 {
		return grant{}, &PlatformError{Op: op, HTTPStatus: 200, Message: "answer lacks authorizer_access_token, authorizer_refresh_token or expires_in"}
	}
	if out.AppID != "" && !ValidAppID(out.AppID) {
		return grant{}, &PlatformError{Op: op, HTTPStatus: 200, Message: "answer carries a malformed authorizer_appid"}
	}
	return grant{
		AccessToken: Secret(out.AccessToken), ExpiresIn: time.Duration(out.ExpiresIn) * time.Second,
		RefreshToken: Secret(out.RefreshToken), RefreshExpiresIn: time.Duration(out.RefreshExpiresIn) * time.Second,
		AppID: out.AppID, Permissions: out.Permissions,
	}, nil
}

// RetrieveCode asks for a fresh authorization code of an authorizer that is still
// authorized (找回授权码): the recovery path when a refresh token is lost.
func (c *client) RetrieveCode(ctx context.Context, componentToken Secret, appid string) (Secret, time.Duration, error) {
	var out struct {
		Code      string  `json:"authorization_code"`
		ExpiresIn flexInt `json:"expires_in"`
	}
	var err error
	if c.family == V2 {
		body, _ := json.Marshal(map[string]string{"authorization_appid": appid})
		err = c.do(ctx, OpRetrieve, http.MethodPost, "/api/tpapp/v2/auth/retrieve_auth_code/", nil, componentToken.Reveal(), body, &out)
	} else {
		q := url.Values{}
		q.Set("component_appid", c.appID)
		q.Set("component_access_token", componentToken.Reveal())
		q.Set("authorization_appid", appid)
		err = c.do(ctx, OpRetrieve, http.MethodPost, "/openapi/v1/auth/retrieve", q, "", nil, &out)
	}
	if err != nil {
		return "", 0, err
	}
	if out.Code == "" {
		return "", 0, &PlatformError{Op: OpRetrieve, HTTPStatus: 200, Message: "answer lacks authorization_code"}
	}
	return Secret(out.Code), time.Duration(out.ExpiresIn) * time.Second, nil
}

// AuthorizedApps lists one page (1-based) of the authorizers of this TP; size ≤ 50.
func (c *client) AuthorizedApps(ctx context.Context, componentToken Secret, page, size int) ([]authorizedApp, int, error) {
	if page < 1 {
		page = 1
	}
	if size < 1 || size > 50 {
		size = 50
	}
	q := url.Values{}
	q.Set("page", strconv.Itoa(page))
	q.Set("size", strconv.Itoa(size))
	var out struct {
		V1List []struct {
			AppID    string  `json:"authAppId"`
			AuthTime flexInt `json:"authTime"`
		} `json:"authAppList"`
		V2List []struct {
			AppID    string  `json:"auth_appid"`
			AuthTime flexInt `json:"auth_time"`
		} `json:"auth_app_list"`
		Total flexInt `json:"total"`
	}
	var err error
	if c.family == V2 {
		err = c.do(ctx, OpAppList, http.MethodGet, "/api/tpapp/v2/auth/get_auth_app_list/", q, componentToken.Reveal(), nil, &out)
	} else {
		q.Set("component_appid", c.appID)
		q.Set("component_access_token", componentToken.Reveal())
		err = c.do(ctx, OpAppList, http.MethodGet, "/openapi/v1/tp/auth_app_list", q, "", nil, &out)
	}
	if err != nil {
		return nil, 0, err
	}
	apps := make([]authorizedApp, 0, len(out.V1List)+len(out.V2List))
	for _, a := range out.V1List {
		apps = append(apps, authorizedApp{AppID: a.AppID, AuthTime: time.Unix(int64(a.AuthTime), 0)})
	}
	for _, a := range out.V2List {
		apps = append(apps, authorizedApp{AppID: a.AppID, AuthTime: time.Unix(int64(a.AuthTime), 0)})
	}
	return apps, int(out.Total), nil
}

// envelope covers the platform's error envelopes and its data wrapper
// (docs/protocol.md §Envelopes, §App credentials): v1 errno/message; v2
// err_no/err_msg (err_tips at the app token endpoint)/log_id; the older APIs'
// errcode/errmsg; and, at open.douyin.com's oauth endpoints, a code inside
// data (error_code/description) with an extra object.
type envelope struct {
	Errno   *flexInt        `json:"errno"`
	Message string          `json:"message"`
	ErrNo   *flexInt        `json:"err_no"`
	ErrMsg  string          `json:"err_msg"`
	ErrTips string          `json:"err_tips"`
	Errcode *flexInt        `json:"errcode"`
	Errmsg  string          `json:"errmsg"`
	LogID   string          `json:"log_id"`
	Data    json.RawMessage `json:"data"`
	Extra   *struct {
		LogID string `json:"logid"`
	} `json:"extra"`
}

// dataError is the code an answer carries inside data.
type dataError struct {
	ErrorCode   *flexInt `json:"error_code"`
	Description string   `json:"description"`
}

// do makes one call and decodes the answer into out. The answer may be bare
// fields (v1 token endpoints) or wrapped in data (v2); any error envelope
// becomes a *PlatformError.
func (c *caller) do(ctx context.Context, op, method, path string, q url.Values, accessToken string, body []byte, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	u := *c.base
	u.Path = strings.TrimRight(c.base.Path, "/") + path
	u.RawQuery = q.Encode()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return fmt.Errorf("platform %s: building request: %w", op, scrubURLError(err))
	}
	req.Header.Set("User-Agent", c.userAgent)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if accessToken != "" {
		req.Header.Set("access-token", accessToken)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("platform %s %s %s: %w", op, method, path, scrubURLError(err))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody+1))
	if err != nil {
		return fmt.Errorf("platform %s %s %s: reading answer: %w", op, method, path, scrubURLError(err))
	}
	if len(raw) > maxResponseBody {
		return &PlatformError{Op: op, HTTPStatus: resp.StatusCode, Message: "answer larger than 1 MiB"}
	}
	var env envelope
	jsonErr := json.Unmarshal(raw, &env)
	if env.LogID == "" && env.Extra != nil {
		env.LogID = env.Extra.LogID
	}
	if code, msg := env.code(); jsonErr == nil && code != 0 {
		return &PlatformError{Op: op, Code: code, Message: truncate(msg, 200), LogID: env.LogID, HTTPStatus: resp.StatusCode}
	}
	if resp.StatusCode != http.StatusOK {
		return &PlatformError{Op: op, HTTPStatus: resp.StatusCode, LogID: env.LogID, Message: "unexpected HTTP status " + strconv.Itoa(resp.StatusCode)}
	}
	if jsonErr != nil {
		return &PlatformError{Op: op, HTTPStatus: resp.StatusCode, Message: "answer is not JSON"}
	}
	payload := raw
	if len(env.Data) > 0 && env.Data[0] == '{' {
		payload = env.Data
	}
	if err := json.Unmarshal(payload, out); err != nil {
		return &PlatformError{Op: op, HTTPStatus: resp.StatusCode, LogID: env.LogID, Message: "answer has unexpected field types"}
	}
	return nil
}

func (e *envelope) code() (int, string) {
	switch {
	case e.ErrNo != nil && *e.ErrNo != 0:
		if e.ErrMsg == "" {
			return int(*e.ErrNo), e.ErrTips
		}
		return int(*e.ErrNo), e.ErrMsg
	case e.Errno != nil && *e.Errno != 0:
		return int(*e.Errno), e.Message
	case e.Errcode != nil && *e.Errcode != 0:
		return int(*e.Errcode), e.Errmsg
	}
	if len(e.Data) > 0 && e.Data[0] == '{' && bytes.Contains(e.Data, []byte(`"error_code"`)) {
		var d dataError
		if json.Unmarshal(e.Data, &d) == nil && d.ErrorCode != nil && *d.ErrorCode != 0 {
			return int(*d.ErrorCode), d.Description
		}
	}
	return 0, ""
}

// scrubURLError drops the URL (whose query holds secrets) from a *url.Error.
func scrubURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// flexInt decodes a JSON number or a numeric string.
type flexInt int64

func (f *flexInt) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		*f = 0
		return nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("not a number: %s", truncate(s, 20))
	}
	*f = flexInt(v)
	return nil
}
