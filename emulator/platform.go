package emulator

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

// Paths of the emulated endpoints (docs/protocol.md, §Component token to
// §Downstream APIs). v2 paths are matched with or without their trailing slash.
const (
	PathV1ComponentToken = "/openapi/v1/auth/tp/token"
	PathV1OAuthToken     = "/openapi/v1/oauth/token"
	PathV1Retrieve       = "/openapi/v1/auth/retrieve"
	PathV1AppList        = "/openapi/v1/tp/auth_app_list"
	PathV1Downstream     = "/openapi/v1/microapp/app/info" // sample; any other v1 API path behaves the same

	PathV2ComponentToken = "/openapi/v2/auth/tp/token/"
	PathV2AuthToken      = "/api/tpapp/v2/auth/get_auth_token/"
	PathV2Retrieve       = "/api/tpapp/v2/auth/retrieve_auth_code/"
	PathV2AppList        = "/api/tpapp/v2/auth/get_auth_app_list/"
	PathV2Downstream     = "/api/apps/v2/basic_info/get_info/" // sample; any other v2 API path behaves the same
)

// hostFamilies are the platform's hosts (docs/sdk-compat.md §Hosts). Every path
// that is not a token endpoint is an API of the family of the host it was sent
// to, so the emulator can stand behind a sidecar that serves these names:
// reverse_proxy hands the client's Host to the upstream unchanged. The hosts
// after open.douyin.com are those the official Node.js SDK also calls; they
// take the token in a header, as v2 does.
var hostFamilies = map[string]tokensource.Family{
	"open.microapp.bytedance.com":    tokensource.V1,
	"open.douyin.com":                tokensource.V2,
	"developer.toutiao.com":          tokensource.V2,
	"developer-product.zijieapi.com": tokensource.V2,
	"minigame.zijieapi.com":          tokensource.V2,
	"webcast.bytedance.com":          tokensource.V2,
}

// hostFamily is the family of a platform host (a Host header, port allowed).
func hostFamily(host string) (tokensource.Family, bool) {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	f, ok := hostFamilies[strings.ToLower(strings.TrimSuffix(host, "."))]
	return f, ok
}

// Grant types of the token endpoints.
const (
	GrantCode    = "app_to_tp_authorization_code"
	GrantRefresh = "app_to_tp_refresh_token"
)

// maxBody bounds the request bodies the emulator reads.
const maxBody = 16 << 20

// style is how an endpoint answers.
type style int

const (
	styleBare       style = iota // success: bare fields; error: {"errno","message"} (v1 token endpoints, v2 component token)
	styleV1Envelope              // {"errno":0,"message":"success","data":{...}}
	styleV2Envelope              // {"err_no","err_msg","log_id","data"}
	styleAppToken                // {"err_no","err_tips","data"} (the app_access_token endpoint)
	styleOAuth                   // {"data":{...,"error_code","description"},"message"} (open.douyin.com oauth)
)

// dialect is how an API answers a bad token, where it differs from its
// endpoint's style (apptoken.go: appAPIs).
type dialect int

const (
	dialectStyle         dialect = iota // the route's style
	dialectErrcode                      // {"errcode","errmsg"} (old body-token APIs)
	dialectDataErrorCode                // {"data":{"error_code","description"},"extra":{...},"message":"error"}
)

type route struct {
	family  tokensource.Family
	style   style
	op      func(r *http.Request) string
	handler func(e *Emulator, c *call) (any, *apiError)
}

func fixedOp(op string) func(*http.Request) string { return func(*http.Request) string { return op } }

func grantOp(r *http.Request) string {
	if r.URL.Query().Get("grant_type") == GrantRefresh {
		return OpRefresh
	}
	return OpExchange
}

var routes = map[string]route{
	PathV1ComponentToken: {tokensource.V1, styleBare, fixedOp(OpComponentToken), (*Emulator).componentToken},
	PathV1OAuthToken:     {tokensource.V1, styleBare, grantOp, (*Emulator).authToken},
	PathV1Retrieve:       {tokensource.V1, styleBare, fixedOp(OpRetrieve), (*Emulator).retrieve},
	PathV1AppList:        {tokensource.V1, styleV1Envelope, fixedOp(OpAppList), (*Emulator).appList},
	PathV2ComponentToken: {tokensource.V2, styleBare, fixedOp(OpComponentToken), (*Emulator).componentToken},
	PathV2AuthToken:      {tokensource.V2, styleV2Envelope, grantOp, (*Emulator).authToken},
	PathV2Retrieve:       {tokensource.V2, styleV2Envelope, fixedOp(OpRetrieve), (*Emulator).retrieve},
	PathV2AppList:        {tokensource.V2, styleV2Envelope, fixedOp(OpAppList), (*Emulator).appList},

	PathAppToken:          {tokensource.V2, styleAppToken, fixedOp(OpAppAccessToken), (*Emulator).appAccessToken},
	PathMiniGameAppToken:  {tokensource.V2, styleAppToken, fixedOp(OpAppAccessToken), (*Emulator).appAccessToken},
	PathClientToken:       {tokensource.V2, styleOAuth, fixedOp(OpClientToken), (*Emulator).clientToken},
	PathStableClientToken: {tokensource.V2, styleOAuth, fixedOp(OpClientToken), (*Emulator).clientToken},
}

// The APIs other than the token endpoints, by family and token kind.
var apiRoutes = map[tokensource.Family]struct{ authorizer, tp route }{
	tokensource.V1: {
		route{tokensource.V1, styleV1Envelope, fixedOp(OpDownstream), (*Emulator).downstream},
		route{tokensource.V1, styleV1Envelope, fixedOp(OpDownstream), (*Emulator).tpAPI},
	},
	tokensource.V2: {
		route{tokensource.V2, styleV2Envelope, fixedOp(OpDownstream), (*Emulator).downstream},
		route{tokensource.V2, styleV2Envelope, fixedOp(OpDownstream), (*Emulator).tpAPI},
	},
}

// matchRoute finds the endpoint of a request. The token endpoints match by
// path on any host. Any other path is an API: of the family of a platform host
// (hostFamilies); on another host (a test's loopback address) /openapi/v1/ and
// /openapi/v2/ are v1 APIs, /api/ are v2 APIs, and the rest is unknown.
func matchRoute(host, p string) (route, bool) {
	if rt, ok := routes[p]; ok {
		return rt, true
	}
	if rt, ok := routes[p+"/"]; ok && rt.family == tokensource.V2 {
		return rt, true
	}
	f, ok := hostFamily(host)
	if !ok {
		switch {
		case strings.HasPrefix(p, "/openapi/v1/"), strings.HasPrefix(p, "/openapi/v2/"):
			f = tokensource.V1
		case strings.HasPrefix(p, "/api/"), strings.HasPrefix(p, "/js/"):
			f = tokensource.V2
		default:
			return route{}, false
		}
	}
	// The TP-level APIs take the component token, the others an authorizer
	// token: the table tptoken's `token auto` uses too.
	if f.TakesComponentToken(p) {
		return apiRoutes[f].tp, true
	}
	return apiRoutes[f].authorizer, true
}

// apiError is a business error answered in the endpoint's envelope.
type apiError struct {
	code    int
	msg     string
	dialect dialect // how it is answered, when not in the route's style
}

func apiErr(code int, format string, args ...any) *apiError {
	return &apiError{code: code, msg: fmt.Sprintf(format, args...)}
}

// Platform error codes the emulator answers (docs/protocol.md §Errors).
const (
	ErrnoParam                = 40001 // 参数错误 / missing parameter
	ErrnoMissing              = 40002 // 缺少参数
	ErrnoUnknownComponent     = 40003 // 找不到相关第三方小程序应用
	ErrnoUnknownAuthorizer    = 40004 // 找不到相关授权小程序
	ErrnoComponentExpired     = 40009 // component_access_token 已过期
	ErrnoComponentInvalid     = 40010 // component_access_token 不正确
	ErrnoCodeExpired          = 40018 // 授权码已过期 (or used)
	ErrnoAccessTokenInvalid   = 40020 // authorizer_access_token 不正确或者已过期
	ErrnoRefreshTokenInvalid  = 40021 // authorizer_refresh_token 不正确或者已过期
	ErrnoNotAuthorized        = 40022 // 此小程序未授权给第三方小程序应用
	ErrnoBadTicket            = 40037 // 无效的 ticket
	ErrnoBadSecret            = 40038 // 无效的 secret
	ErrnoBadGrant             = 40040 // 无效的 grant_type
	ErrnoRetry                = 40045 // 生成 token 失败,请重试
	ErrNoV2AccessTokenInvalid = 28001003
	ErrNoV2AccessTokenExpired = 28001008
)

// call is one platform request being answered, under e.mu.
type call struct {
	r      *http.Request
	body   []byte
	family tokensource.Family
	now    time.Time
	appid  string // the authorizer concerned, for logs
	kind   string // APIs other than the token endpoints: the token kind taken (authorizer, component)
	after  func() // run after the answer is written, outside the lock
}

// ServeHTTP answers the platform endpoints and the /_emulator/ control surface.
func (e *Emulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/_emulator/") {
		e.serveControl(w, r)
		return
	}
	if r.URL.Path == PathAuthorizationPage {
		e.serveAuthorizationPage(w, r)
		return
	}
	rt, ok := matchRoute(r.Host, r.URL.Path)
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]any{"errno": http.StatusNotFound,
			"message": "tptoken emulator: no such endpoint: " + r.Method + " " + r.URL.Path +
				" (APIs are under /openapi/v1/, /openapi/v2/ and /api/, or any path on a platform host such as open.douyin.com)"})
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		writeAnswer(w, rt, http.StatusMethodNotAllowed, nil, apiErr(ErrnoParam, "method %s not allowed", r.Method), "")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return // the client went away
	}
	if len(body) > maxBody {
		writeAnswer(w, rt, http.StatusRequestEntityTooLarge, nil, apiErr(ErrnoParam, "body too large"), "")
		return
	}
	op := rt.op(r)

	e.mu.Lock()
	e.stats.calls[op]++
	f, latency := e.takeFaultLocked(op, e.subjectLocked(op, rt.family, r, body))
	if f != faultNone {
		e.stats.faulted[op]++
	}
	e.mu.Unlock()

	if f == faultDown {
		http.Error(w, "503 Service Unavailable (emulated outage)", http.StatusServiceUnavailable)
		return
	}
	if f == faultRate {
		e.rateRefused(w, rt, op, r, body)
		return
	}
	if sleepCtx(r.Context(), latency) != nil {
		return
	}
	switch f {
	case fault502:
		http.Error(w, "502 Bad Gateway (emulated)", http.StatusBadGateway)
		return
	case fault503:
		http.Error(w, "503 Service Unavailable (emulated)", http.StatusServiceUnavailable)
		return
	case fault40045:
		e.mu.Lock()
		logID := e.logIDLocked(e.now())
		e.mu.Unlock()
		writeAnswer(w, rt, http.StatusOK, nil, apiErr(ErrnoRetry, "生成 token 失败,请重试 (emulated)"), logID)
		return
	}

	c := &call{r: r, body: body, family: rt.family}
	e.mu.Lock()
	c.now = e.now()
	data, aerr := rt.handler(e, c)
	logID := e.logIDLocked(c.now)
	if c.kind != "" {
		e.recordCallLocked(c, data, aerr)
	}
	e.mu.Unlock()

	fields := []zap.Field{zap.String("op", op), zap.String("family", string(rt.family)), zap.String("appid", c.appid)}
	if aerr != nil {
		fields = append(fields, zap.Int("errno", aerr.code), zap.String("message", aerr.msg))
	}
	if f == faultDrop {
		fields = append(fields, zap.Bool("response_dropped", true))
	}
	e.log.Debug("platform call", fields...)

	if f == faultDrop {
		writeAnswer(&dropWriter{}, rt, http.StatusOK, data, aerr, logID)
		if c.after != nil {
			c.after()
		}
		dropConnection(w)
		return
	}
	writeAnswer(w, rt, http.StatusOK, data, aerr, logID)
	if c.after != nil {
		c.after()
	}
}

// subjectLocked finds the authorizer a call is about, for AppID-limited faults.
func (e *Emulator) subjectLocked(op string, f tokensource.Family, r *http.Request, body []byte) string {
	q := r.URL.Query()
	switch op {
	case OpExchange:
		if cd := e.codes[q.Get("authorization_code")]; cd != nil {
			return cd.appid
		}
	case OpRefresh:
		if t := e.tokens[q.Get("authorizer_refresh_token")]; t != nil {
			return t.appid
		}
	case OpRetrieve:
		if f == tokensource.V1 {
			return q.Get("authorization_appid")
		}
		var b struct {
			AppID string `json:"authorization_appid"`
		}
		_ = json.Unmarshal(body, &b)
		return b.AppID
	case OpAppAccessToken, OpClientToken:
		var b appTokenRequest
		_ = json.Unmarshal(body, &b)
		return b.AppID + b.ClientKey
	case OpDownstream:
		v := q.Get("authorizer_access_token")
		if f == tokensource.V2 {
			v = v2APIToken(r.Header)
		}
		if t := e.tokens[v]; t != nil {
			return t.appid
		}
	}
	return ""
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "emulator: cannot encode the answer", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b)
}

// writeAnswer writes data or aerr in the route's envelope. Business errors are
// HTTP 200, as on the platform.
func writeAnswer(w http.ResponseWriter, rt route, status int, data any, aerr *apiError, logID string) {
	if aerr != nil && aerr.dialect != dialectStyle {
		switch aerr.dialect {
		case dialectErrcode:
			writeJSON(w, status, map[string]any{"errcode": aerr.code, "errmsg": aerr.msg})
		case dialectDataErrorCode:
			writeJSON(w, status, map[string]any{"data": map[string]any{"error_code": aerr.code, "description": aerr.msg},
				"extra": map[string]any{"error_code": aerr.code, "description": aerr.msg, "logid": logID}, "message": "error"})
		}
		return
	}
	switch rt.style {
	case styleAppToken:
		if aerr != nil {
			writeJSON(w, status, map[string]any{"err_no": aerr.code, "err_tips": aerr.msg, "data": map[string]any{"access_token": "", "expires_in": 0}})
			return
		}
		writeJSON(w, status, map[string]any{"err_no": 0, "err_tips": "success", "data": data})
		return
	case styleOAuth:
		if aerr != nil {
			writeJSON(w, status, map[string]any{"data": map[string]any{"error_code": aerr.code, "description": aerr.msg, "captcha": "", "desc_url": ""},
				"extra": map[string]any{"error_code": aerr.code, "description": aerr.msg, "logid": logID}, "message": "error"})
			return
		}
		writeJSON(w, status, map[string]any{"data": data, "message": "success"})
		return
	}
	switch rt.style {
	case styleV2Envelope:
		if aerr != nil {
			writeJSON(w, status, map[string]any{"err_no": aerr.code, "err_msg": aerr.msg, "log_id": logID, "data": struct{}{}})
			return
		}
		writeJSON(w, status, v2Envelope{ErrNo: 0, ErrMsg: "", LogID: logID, Data: data})
	case styleV1Envelope:
		if aerr != nil {
			writeJSON(w, status, v1Error{Errno: aerr.code, Message: aerr.msg})
			return
		}
		writeJSON(w, status, v1Envelope{Errno: 0, Message: "success", Data: data})
	default:
		if aerr != nil {
			writeJSON(w, status, v1Error{Errno: aerr.code, Message: aerr.msg})
			return
		}
		writeJSON(w, status, data)
	}
}

type v1Error struct {
	Errno   int    `json:"errno"`
	Message string `json:"message"`
}

type v1Envelope struct {
	Errno   int    `json:"errno"`
	Message string `json:"message"`
	Data    any    `json:"data"`
}

type v2Envelope struct {
	ErrNo  int    `json:"err_no"`
	ErrMsg string `json:"err_msg"`
	LogID  string `json:"log_id"`
	Data   any    `json:"data"`
}

func seconds(d time.Duration) int64 { return int64(d / time.Second) }

// componentTokenResponse is the answer of the component-token endpoints.
type componentTokenResponse struct {
	ComponentAccessToken string `json:"component_access_token"`
	ExpiresIn            int64  `json:"expires_in"`
}

// componentToken: v1 returns the same token while more than V1ReissueWindow
// remains, then a new one (the old stays valid until its expiry). v2 issues a
// new token on every call; the previous one lives V2Grace more; the one before
// it dies at once.
func (e *Emulator) componentToken(c *call) (any, *apiError) {
	q := c.r.URL.Query()
	appid, secret, tk := q.Get("component_appid"), q.Get("component_appsecret"), q.Get("component_ticket")
	if appid == "" || secret == "" || tk == "" {
		return nil, apiErr(ErrnoParam, "参数错误: component_appid, component_appsecret and component_ticket are required")
	}
	if appid != e.appid {
		return nil, apiErr(ErrnoUnknownComponent, "找不到相关第三方小程序应用")
	}
	if subtle.ConstantTimeCompare([]byte(secret), []byte(e.secret)) != 1 {
		return nil, apiErr(ErrnoBadSecret, "无效的 secret")
	}
	if !e.ticketValidLocked(tk, c.now) {
		return nil, apiErr(ErrnoBadTicket, "无效的 ticket")
	}
	e.stats.total.ComponentTokenFetches++
	if c.family == tokensource.V1 {
		if cur := e.tokens[e.compLatest[tokensource.V1]]; cur != nil && cur.usable(c.now) &&
			cur.expiry.Sub(c.now) > e.life.V1ReissueWindow {
			return componentTokenResponse{e.compLatest[tokensource.V1], seconds(cur.expiry.Sub(c.now))}, nil
		}
	} else {
		if prev := e.compPrevious[tokensource.V2]; prev != "" {
			e.killLocked(prev, "superseded twice")
		}
		if latest := e.compLatest[tokensource.V2]; latest != "" {
			if t := e.tokens[latest]; t.expiry.After(c.now.Add(e.life.V2Grace)) {
				t.expiry = c.now.Add(e.life.V2Grace)
			}
			e.compPrevious[tokensource.V2] = latest
		}
	}
	v := e.newTokenLocked(kindComponent, c.family, "", c.now, e.life.ComponentTokenTTL)
	e.compLatest[c.family] = v
	e.stats.total.ComponentTokensIssued++
	e.log.Info("component token issued", zap.String("family", string(c.family)), fp(v))
	return componentTokenResponse{v, seconds(e.life.ComponentTokenTTL)}, nil
}

// checkComponentLocked validates the component token of a TP-level call: v1
// from the query (with component_appid), v2 from the access-token header.
func (e *Emulator) checkComponentLocked(c *call) *apiError {
	return e.checkComponentTokenLocked(c, c.r.Header.Get("access-token"))
}

// checkComponentTokenLocked is checkComponentLocked with the v2 token given
// (v1 reads its query).
func (e *Emulator) checkComponentTokenLocked(c *call, v string) *apiError {
	if c.family == tokensource.V1 {
		q := c.r.URL.Query()
		switch q.Get("component_appid") {
		case "":
			return apiErr(ErrnoParam, "参数错误: component_appid is required")
		case e.appid:
		default:
			return apiErr(ErrnoUnknownComponent, "找不到相关第三方小程序应用")
		}
		v = q.Get("component_access_token")
	}
	if v == "" {
		return apiErr(ErrnoParam, "参数错误: component_access_token is required")
	}
	t := e.tokens[v]
	if t == nil || t.kind != kindComponent || t.family != c.family || t.dead {
		return apiErr(ErrnoComponentInvalid, "component_access_token 不正确")
	}
	if !c.now.Before(t.expiry) {
		return apiErr(ErrnoComponentExpired, "component_access_token 已过期")
	}
	return nil
}

// Permission is one entry of authorize_permission.
type Permission struct {
	ID          int    `json:"id"`
	Category    string `json:"category"`
	Description string `json:"description"`
}

// permissions is what every emulated authorizer grants.
var permissions = []Permission{
	{1, "开发管理权限", "代小程序开发、提审、发布"},
	{2, "基本信息设置权限", "设置小程序名称、头像、简介"},
	{3, "运营管理权限", "管理小程序的运营"},
	{4, "数据分析权限", "查看小程序数据"},
}

// authTokenResponse is the exchange / refresh answer (the same fields in v1,
// bare, and in v2, as data).
type authTokenResponse struct {
	AuthorizerAccessToken  string       `json:"authorizer_access_token"`
	ExpiresIn              int64        `json:"expires_in"`
	AuthorizerRefreshToken string       `json:"authorizer_refresh_token"`
	RefreshExpiresIn       int64        `json:"refresh_expires_in"`
	AuthorizerAppID        string       `json:"authorizer_appid"`
	AuthorizePermission    []Permission `json:"authorize_permission"`
}

// authToken is the exchange / refresh endpoint of both families.
func (e *Emulator) authToken(c *call) (any, *apiError) {
	if err := e.checkComponentLocked(c); err != nil {
		return nil, err
	}
	q := c.r.URL.Query()
	switch q.Get("grant_type") {
	case GrantCode:
		return e.exchangeLocked(c, q.Get("authorization_code"))
	case GrantRefresh:
		return e.refreshLocked(c, q.Get("authorizer_refresh_token"))
	}
	return nil, apiErr(ErrnoBadGrant, "无效的 grant_type")
}

// issueChainLocked gives a a new pair in c.family, killing the previous one.
func (e *Emulator) issueChainLocked(c *call, a *authorizer, why string) authTokenResponse {
	if old := a.chains[c.family]; old != nil {
		e.killLocked(old.access, why)
		e.killLocked(old.refresh, why)
	}
	ch := &chain{
		access:  e.newTokenLocked(kindAccess, c.family, a.appid, c.now, e.life.AccessTokenTTL),
		refresh: e.newTokenLocked(kindRefresh, c.family, a.appid, c.now, e.life.RefreshTokenTTL),
	}
	a.chains[c.family] = ch
	return authTokenResponse{
		AuthorizerAccessToken: ch.access, ExpiresIn: seconds(e.life.AccessTokenTTL),
		AuthorizerRefreshToken: ch.refresh, RefreshExpiresIn: seconds(e.life.RefreshTokenTTL),
		AuthorizerAppID: a.appid, AuthorizePermission: permissions,
	}
}

// exchangeLocked redeems a single-use code; the family's previous chain dies.
func (e *Emulator) exchangeLocked(c *call, v string) (any, *apiError) {
	if v == "" {
		return nil, apiErr(ErrnoParam, "参数错误: authorization_code is required")
	}
	cd := e.codes[v]
	if cd == nil || cd.used || cd.dead || !c.now.Before(cd.expiry) {
		if cd != nil {
			c.appid = cd.appid
		}
		return nil, apiErr(ErrnoCodeExpired, "授权码已过期")
	}
	c.appid = cd.appid
	a := e.auths[cd.appid]
	if a == nil || !a.authorized {
		return nil, apiErr(ErrnoUnknownAuthorizer, "找不到相关授权小程序")
	}
	cd.used = true
	resp := e.issueChainLocked(c, a, "replaced by a new exchange")
	e.countLocked(a.appid, func(k *Counters) { k.Exchanges++ })
	e.log.Info("code exchanged", zap.String("appid", a.appid), zap.String("family", string(c.family)), fp(resp.AuthorizerAccessToken))
	return resp, nil
}

// refreshLocked rotates a chain: the refresh token is single-use, and the old
// access token dies with it.
func (e *Emulator) refreshLocked(c *call, v string) (any, *apiError) {
	if v == "" {
		return nil, apiErr(ErrnoParam, "参数错误: authorizer_refresh_token is required")
	}
	t := e.tokens[v]
	dead := func(why string) (any, *apiError) {
		appid := ""
		if t != nil {
			appid = t.appid
		}
		c.appid = appid
		e.countLocked(appid, func(k *Counters) { k.Refresh40021++ })
		e.log.Info("refresh refused with 40021", zap.String("appid", appid), zap.String("family", string(c.family)), zap.String("why", why), fp(v))
		return nil, apiErr(ErrnoRefreshTokenInvalid, "authorizer_refresh_token 不正确或者已过期")
	}
	if t == nil {
		return dead("unknown refresh token")
	}
	if t.kind != kindRefresh || t.family != c.family {
		return dead("not a " + string(c.family) + " refresh token")
	}
	c.appid = t.appid
	a := e.auths[t.appid]
	if a == nil || !a.authorized {
		return nil, apiErr(ErrnoUnknownAuthorizer, "找不到相关授权小程序")
	}
	if t.dead {
		return dead(t.why)
	}
	if !c.now.Before(t.expiry) {
		return dead("expired")
	}
	t.dead, t.why = true, "used"
	resp := e.issueChainLocked(c, a, "rotated by a refresh")
	e.countLocked(a.appid, func(k *Counters) { k.Refreshes++ })
	e.log.Info("refreshed", zap.String("appid", a.appid), zap.String("family", string(c.family)), fp(resp.AuthorizerAccessToken))
	return resp, nil
}

type retrieveResponse struct {
	AuthorizationCode string `json:"authorization_code"`
	ExpiresIn         int64  `json:"expires_in"`
}

// retrieve is 找回授权码: a new code for an authorized app, also pushed as
// UPDATE_AUTHORIZED (in the background, as the platform does).
func (e *Emulator) retrieve(c *call) (any, *apiError) {
	if err := e.checkComponentLocked(c); err != nil {
		return nil, err
	}
	var appid string
	if c.family == tokensource.V1 {
		appid = c.r.URL.Query().Get("authorization_appid")
	} else {
		var b struct {
			AppID string `json:"authorization_appid"`
		}
		if err := json.Unmarshal(c.body, &b); err != nil {
			return nil, apiErr(ErrnoParam, "参数错误: body must be JSON {\"authorization_appid\"}")
		}
		appid = b.AppID
	}
	if appid == "" {
		return nil, apiErr(ErrnoParam, "参数错误: authorization_appid is required")
	}
	c.appid = appid
	a := e.auths[appid]
	if a == nil {
		return nil, apiErr(ErrnoUnknownAuthorizer, "找不到相关授权小程序")
	}
	if !a.authorized {
		return nil, apiErr(ErrnoNotAuthorized, "此小程序未授权给第三方小程序应用")
	}
	v, ttl := e.newCodeLocked(appid, c.now)
	e.countLocked(appid, func(k *Counters) { k.Retrieves++ })
	e.log.Info("code retrieved", zap.String("appid", appid), zap.String("family", string(c.family)))
	if e.pushURL != "" {
		p := authPayload{AppID: appid, TpAppID: e.appid, EventTime: push.FormatTime(c.now),
			Event: "UPDATE_AUTHORIZED", AuthorizationCode: v, AuthorizationCodeExpiresIn: seconds(ttl)}
		c.after = func() { e.goPushRetrying(appid, p) }
	}
	return retrieveResponse{v, seconds(ttl)}, nil
}

type v1AppListData struct {
	AuthAppList []v1AuthApp `json:"authAppList"`
	Total       int         `json:"total"`
}

type v1AuthApp struct {
	AuthAppID string `json:"authAppId"`
	AuthTime  int64  `json:"authTime"`
}

type v2AppListData struct {
	AuthAppList []v2AuthApp `json:"auth_app_list"`
	Total       int         `json:"total"`
}

type v2AuthApp struct {
	AuthAppID string `json:"auth_appid"`
	AuthTime  int64  `json:"auth_time"`
}

// appList lists the authorized apps in authorization order, page by page.
func (e *Emulator) appList(c *call) (any, *apiError) {
	if err := e.checkComponentLocked(c); err != nil {
		return nil, err
	}
	q := c.r.URL.Query()
	page, err1 := strconv.Atoi(q.Get("page"))
	size, err2 := strconv.Atoi(q.Get("size"))
	if err1 != nil || err2 != nil || page < 1 || size < 1 || size > 50 {
		return nil, apiErr(ErrnoParam, "参数错误: page >= 1 and 1 <= size <= 50 are required")
	}
	all := e.authorizedListLocked()
	start := min((page-1)*size, len(all))
	end := min(start+size, len(all))
	if c.family == tokensource.V1 {
		d := v1AppListData{AuthAppList: []v1AuthApp{}, Total: len(all)}
		for _, a := range all[start:end] {
			d.AuthAppList = append(d.AuthAppList, v1AuthApp{a.appid, a.authTime.Unix()})
		}
		return d, nil
	}
	d := v2AppListData{AuthAppList: []v2AuthApp{}, Total: len(all)}
	for _, a := range all[start:end] {
		d.AuthAppList = append(d.AuthAppList, v2AuthApp{a.appid, a.authTime.Unix()})
	}
	return d, nil
}

// DownstreamData is what the APIs other than the token endpoints answer on
// success: who owns the token received, and what the request carried, with
// token values masked.
type DownstreamData struct {
	AppID              string `json:"appid"`  // the authorizer owning the token; the TP for a TP-level API
	Family             string `json:"family"` // v1 or v2
	Token              string `json:"token"`  // the kind of token the API took: authorizer or component
	Method             string `json:"method"`
	Path               string `json:"path"`  // as received (escaped form)
	Query              string `json:"query"` // raw query as received, token values replaced by ***
	BodyLen            int    `json:"body_len"`
	BodySHA256         string `json:"body_sha256"`
	AccessTokenHeaders int    `json:"access_token_headers"` // access-token headers received
	AccessTokenParams  int    `json:"access_token_params"`  // authorizer_access_token query parameters received
	// TokenCarriers counts, for every header and query parameter that carries
	// a token in some platform API, the values received ("header:x-token": 1):
	// a proxy that leaves a client's copy next to the token it injected shows here.
	TokenCarriers map[string]int `json:"token_carriers"`
}

// The places a token travels in the platform's APIs (docs/sdk-compat.md):
// v2 header access-token, the other SDK hosts' header names, and the v1 query.
var (
	v2TokenHeaders   = []string{"Access-Token", "Access_token", "X-Token"} // canonical keys, in the order v2APIToken tries them
	tokenQueryParams = []string{"authorizer_access_token", "component_access_token", "access_token"}
)

// v2APIToken is the token of a v2-style API: header access-token, or where
// the SDK's methods for developer.toutiao.com and the other hosts put it
// (access_token, x-token) when access-token is absent.
func v2APIToken(h http.Header) string {
	for _, k := range v2TokenHeaders {
		if vs := h[k]; len(vs) > 0 {
			return vs[0]
		}
	}
	return ""
}

// echo is the success answer of an API call that took the token of owner.
func (c *call) echo(owner string) DownstreamData {
	q := c.r.URL.Query()
	carriers := map[string]int{}
	for _, k := range v2TokenHeaders {
		if n := len(c.r.Header[k]); n > 0 {
			carriers["header:"+strings.ToLower(k)] = n
		}
	}
	for _, k := range tokenQueryParams {
		if n := len(q[k]); n > 0 {
			carriers["query:"+k] = n
		}
	}
	if n := bodyTokenFields(c.body); n > 0 {
		carriers["body:access_token"] = n
	}
	sum := sha256.Sum256(c.body)
	return DownstreamData{
		AppID: owner, Family: string(c.family), Token: c.kind, Method: c.r.Method, Path: c.r.URL.EscapedPath(),
		Query: maskQuery(c.r.URL.RawQuery), BodyLen: len(c.body), BodySHA256: hex.EncodeToString(sum[:]),
		AccessTokenHeaders: len(c.r.Header["Access-Token"]), AccessTokenParams: len(q["authorizer_access_token"]),
		TokenCarriers: carriers,
	}
}

// downstream is any API that takes an authorizer token: v1 query
// component_appid + authorizer_access_token (40020 when invalid or expired), v2
// header access-token (28001003 invalid, 28001008 expired).
func (e *Emulator) downstream(c *call) (any, *apiError) {
	c.kind = "authorizer"
	q := c.r.URL.Query()
	v1 := c.family == tokensource.V1
	invalid := func(appid string, foreign bool, expired bool, why string) (any, *apiError) {
		c.appid = appid
		e.countLocked(appid, func(k *Counters) {
			if foreign {
				k.DownstreamForeign++
			} else {
				k.DownstreamInvalid++
			}
		})
		switch {
		case v1:
			return nil, apiErr(ErrnoAccessTokenInvalid, "authorizer_access_token 不正确或者已过期 (%s)", why)
		case expired:
			return nil, apiErr(ErrNoV2AccessTokenExpired, "access_token过期,请刷新或重新授权")
		}
		return nil, apiErr(ErrNoV2AccessTokenInvalid, "access_token无效 (%s)", why)
	}
	var v string
	if v1 {
		switch q.Get("component_appid") {
		case e.appid:
		case "":
			e.countLocked("", func(k *Counters) { k.DownstreamInvalid++ })
			return nil, apiErr(ErrnoMissing, "缺少参数 component_appid")
		default:
			e.countLocked("", func(k *Counters) { k.DownstreamInvalid++ })
			return nil, apiErr(ErrnoUnknownComponent, "找不到相关第三方小程序应用")
		}
		v = q.Get("authorizer_access_token")
		if v == "" {
			e.countLocked("", func(k *Counters) { k.DownstreamInvalid++ })
			return nil, apiErr(ErrnoMissing, "缺少参数 authorizer_access_token")
		}
	} else {
		if data, aerr, handled := e.appDownstream(c); handled {
			return data, aerr
		}
		v = v2APIToken(c.r.Header)
		if v == "" {
			return invalid("", false, false, "no access-token header")
		}
	}
	t := e.tokens[v]
	switch {
	case t == nil:
		return invalid("", false, false, "unknown token")
	case t.kind != kindAccess:
		return invalid(t.appid, true, false, "not an authorizer access token")
	case t.family != c.family:
		return invalid(t.appid, true, false, "a "+string(t.family)+" token")
	case t.dead && t.why == whyUnauthorized && e.goneCode != 0:
		c.appid = t.appid
		e.countLocked(t.appid, func(k *Counters) { k.DownstreamGone++ })
		return nil, apiErr(e.goneCode, "此小程序未授权给第三方小程序应用")
	case t.dead:
		return invalid(t.appid, false, false, t.why)
	case !c.now.Before(t.expiry):
		return invalid(t.appid, false, true, "expired")
	}
	c.appid = t.appid
	e.countLocked(t.appid, func(k *Counters) { k.DownstreamOK++ })
	return c.echo(t.appid), nil
}

// tpAPI is any TP-level API: it takes the component token of the family (v1
// query component_appid + component_access_token, v2 header access-token) and
// answers 40009 / 40010 for an expired or wrong one, as the token endpoints do.
func (e *Emulator) tpAPI(c *call) (any, *apiError) {
	c.kind = "component"
	if err := e.checkComponentTokenLocked(c, v2APIToken(c.r.Header)); err != nil {
		e.countLocked("", func(k *Counters) { k.DownstreamInvalid++ })
		return nil, err
	}
	e.countLocked("", func(k *Counters) { k.DownstreamOK++ })
	return c.echo(e.appid), nil
}

// maxRecentCalls bounds the API calls kept for RecentCalls.
const maxRecentCalls = 100

// APICall is one call of an API other than the token endpoints, as the
// emulator received it (token values masked). Typed SDK methods keep only the
// answer fields their response model declares, so a test driving such a
// method reads what arrived here (GET /_emulator/calls).
type APICall struct {
	Host string `json:"host"`
	Code int    `json:"code"` // the errno / err_no answered; 0 on success
	DownstreamData
}

// recordCallLocked keeps c in the recent-calls log.
func (e *Emulator) recordCallLocked(c *call, data any, aerr *apiError) {
	rec := APICall{Host: c.r.Host}
	if d, ok := data.(DownstreamData); ok {
		rec.DownstreamData = d
	} else {
		rec.DownstreamData = c.echo(c.appid)
	}
	if aerr != nil {
		rec.Code = aerr.code
	}
	if len(e.recent) == maxRecentCalls {
		e.recent = append(e.recent[:0], e.recent[1:]...)
	}
	e.recent = append(e.recent, rec)
}

// RecentCalls returns the last API calls received (at most 100), oldest first.
func (e *Emulator) RecentCalls() []APICall {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]APICall{}, e.recent...)
}

// ClearRecentCalls empties the recent-calls log.
func (e *Emulator) ClearRecentCalls() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.recent = nil
}

// maskedParams are query parameters whose values are secrets.
var maskedParams = map[string]bool{
	"authorizer_access_token": true, "component_access_token": true, "authorizer_refresh_token": true,
	"component_appsecret": true, "component_ticket": true, "authorization_code": true, "access_token": true,
}

// maskQuery returns raw with the values of secret parameters replaced by ***,
// keeping the order and the escaping of everything else.
func maskQuery(raw string) string {
	if raw == "" {
		return ""
	}
	parts := strings.Split(raw, "&")
	for i, p := range parts {
		k, _, hasValue := strings.Cut(p, "=")
		name, err := url.QueryUnescape(k)
		if err != nil {
			name = k
		}
		if maskedParams[name] && hasValue {
			parts[i] = k + "=***"
		}
	}
	return strings.Join(parts, "&")
}
