package emulator

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// Apps' own tokens (docs/protocol.md §App credentials): a mini-app's
// access_token (POST /api/apps/v2/token, and the mini-game copy under
// /mgplatform) and an app's client_token (POST /oauth/client_token/, and the
// idempotent /oauth/stable_client_token/). For each app and kind, a fetch
// issues a new token, cuts the previous one to AppGrace (if it had longer)
// and kills the one before it at once: only the newest two are valid. The
// client_token endpoint refuses more than ClientTokenRate fetches of one
// client_key in 5 minutes (10020).
//
// Every v2 API accepts an app token of either kind where it accepts an
// authorizer token, and answers with the owning app and the kind. A few
// sample paths take the token elsewhere and answer a bad one in their own
// dialect (appAPIs).

// Paths of the app token endpoints.
const (
	PathAppToken          = "/api/apps/v2/token"
	PathMiniGameAppToken  = "/mgplatform/api/apps/v2/token"
	PathClientToken       = "/oauth/client_token/"
	PathStableClientToken = "/oauth/stable_client_token/"
)

// Operations of the app token endpoints (SetFaults, Stats.Calls).
const (
	OpAppAccessToken = "app_access_token"
	OpClientToken    = "client_token"
)

// Defaults of the app token lifetimes and rate.
const (
	DefaultAppTokenTTL     = 2 * time.Hour
	DefaultAppGrace        = 5 * time.Minute
	DefaultClientTokenRate = 500 // fetches per client_key in clientTokenWindow
	clientTokenWindow      = 5 * time.Minute
)

// App token error codes (docs/protocol.md §App credentials).
const (
	ErrNoAppSystem      = -1    // 系统错误
	ErrNoAppParam       = 40014 // an empty parameter (the platform's code is not documented: an emulator choice)
	ErrNoAppBadAppID    = 40015 // appid 错误
	ErrNoAppBadSecret   = 40017 // secret 错误
	ErrNoAppBadGrant    = 40020 // grant_type 不是 client_credential
	ErrCodeClientParam  = 10002 // 参数错误
	ErrCodeClientKey    = 10003 // client_key 错误
	ErrCodeClientSecret = 10013 // client_key 或 client_secret 错误
	ErrCodeClientRate   = 10020 // more than 500 fetches in 5 minutes
	ErrCodeBadToken     = 40002 // errcode of the old body-token APIs: access_token 错误
	ErrCodeDataInvalid  = 2190002
	ErrCodeDataExpired  = 2190008
	appTokenGrantType   = "client_credential"
)

// AppCred is an app the emulator knows: its appid (client_key) and secret,
// the same for both kinds.
type AppCred struct {
	AppID  string `json:"appid"`
	Secret string `json:"secret"`
}

// AppCounters are the counts of one app's tokens of one kind.
type AppCounters struct {
	Fetches           int64 `json:"fetches"`            // tokens issued
	StableReturned    int64 `json:"stable_returned"`    // stable_client_token calls that returned the current token
	KilledAsThird     int64 `json:"killed_as_third"`    // fetches that killed a token still within its grace
	RateRefused       int64 `json:"rate_refused"`       // fetches refused for rate (10020, or the RateLimited fault)
	DownstreamOK      int64 `json:"downstream_ok"`      // API calls with a valid token
	DownstreamInvalid int64 `json:"downstream_invalid"` // API calls with a killed or revoked token
	DownstreamExpired int64 `json:"downstream_expired"` // API calls with a token past its expiry (cut included)
	CutByGrace        int64 `json:"cut_by_grace"`       // fetches that cut the previous token's life to the grace
	Revoked           int64 `json:"revoked,omitempty"`  // RevokeAppToken
	Credentials       int64 `json:"bad_credentials"`    // fetches refused for a wrong appid or secret
}

type appState struct {
	secret  string
	latest  map[string]string      // by kind: the newest token
	prev    map[string]string      // by kind: the one before, in its grace
	fetches map[string][]time.Time // by kind: recent fetch times (client_token rate)
}

type appCounterKey struct{ appid, kind string }

// AddApp makes appid known to both token endpoints with secret. Adding a
// known app again changes its secret.
func (e *Emulator) AddApp(appid, secret string) error {
	if !tokensource.ValidAppID(appid) {
		return fmt.Errorf("emulator: invalid app appid %q", appid)
	}
	if secret == "" {
		return errors.New("emulator: an app needs a secret")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.addAppLocked(appid, secret)
	return nil
}

func (e *Emulator) addAppLocked(appid, secret string) {
	a := e.apps[appid]
	if a == nil {
		a = &appState{latest: map[string]string{}, prev: map[string]string{}, fetches: map[string][]time.Time{}}
		e.apps[appid] = a
	}
	if a.secret != secret {
		a.secret = secret
		e.issued = append(e.issued, secret)
	}
}

// RevokeAppToken makes the newest token of appid's kind stop working (APIs
// answer it as invalid), as when another system's fetches killed it.
func (e *Emulator) RevokeAppToken(appid, kind string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	a := e.apps[appid]
	if a == nil || a.latest[kind] == "" {
		return false
	}
	e.killLocked(a.latest[kind], "revoked")
	e.appCountLocked(appid, kind, func(c *AppCounters) { c.Revoked++ })
	e.log.Info("app token revoked", zap.String("appid", appid), zap.String("kind", kind))
	return true
}

// appKindOf names the kind of an app token.
func appKindOf(k tokenKind) string {
	switch k {
	case kindAppAccess:
		return OpAppAccessToken
	case kindClient:
		return OpClientToken
	}
	return ""
}

func (e *Emulator) appCountLocked(appid, kind string, f func(*AppCounters)) {
	k := appCounterKey{appid, kind}
	c := e.stats.apps[k]
	if c == nil {
		c = &AppCounters{}
		e.stats.apps[k] = c
	}
	f(c)
}

// AppToken returns the counters of appid's tokens of kind.
func (s Stats) AppToken(appid, kind string) AppCounters { return s.Apps[appid+"/"+kind] }

// appTokenRequest is the body of both token endpoints (either field names).
type appTokenRequest struct {
	AppID        string `json:"appid"`
	Secret       string `json:"secret"`
	ClientKey    string `json:"client_key"`
	ClientSecret string `json:"client_secret"`
	GrantType    string `json:"grant_type"`
}

// appTokenData is the data of a successful fetch.
type appTokenData struct {
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
	ExpiresAt   int64  `json:"expires_at,omitempty"` // the mini-game copy adds it
	Description string `json:"description"`
	ErrorCode   int    `json:"error_code"`
}

// appAccessToken is POST /api/apps/v2/token (and the mini-game copy).
func (e *Emulator) appAccessToken(c *call) (any, *apiError) {
	var q appTokenRequest
	if err := json.Unmarshal(c.body, &q); err != nil {
		return nil, apiErr(ErrNoAppParam, "参数错误: the body must be JSON {appid, secret, grant_type}")
	}
	c.appid = q.AppID
	switch {
	case q.AppID == "" || q.Secret == "" || q.GrantType == "":
		return nil, apiErr(ErrNoAppParam, "参数为空: appid, secret and grant_type are required")
	case q.GrantType != appTokenGrantType:
		return nil, apiErr(ErrNoAppBadGrant, "grant_type 不是 client_credential")
	}
	a := e.apps[q.AppID]
	if a == nil {
		return nil, apiErr(ErrNoAppBadAppID, "bad appid")
	}
	if subtle.ConstantTimeCompare([]byte(q.Secret), []byte(a.secret)) != 1 {
		e.appCountLocked(q.AppID, OpAppAccessToken, func(k *AppCounters) { k.Credentials++ })
		return nil, apiErr(ErrNoAppBadSecret, "bad secret")
	}
	d := e.issueAppTokenLocked(c, a, q.AppID, OpAppAccessToken)
	if strings.HasPrefix(c.r.URL.Path, "/mgplatform/") {
		d.ExpiresAt = c.now.Add(e.life.AppTokenTTL).Unix()
	}
	return d, nil
}

// clientToken is POST /oauth/client_token/ and /oauth/stable_client_token/.
func (e *Emulator) clientToken(c *call) (any, *apiError) {
	var q appTokenRequest
	if err := json.Unmarshal(c.body, &q); err != nil {
		return nil, apiErr(ErrCodeClientParam, "参数错误: the body must be JSON {client_key, client_secret, grant_type}")
	}
	c.appid = q.ClientKey
	if q.ClientKey == "" || q.ClientSecret == "" || q.GrantType != appTokenGrantType {
		return nil, apiErr(ErrCodeClientParam, "参数错误")
	}
	a := e.apps[q.ClientKey]
	if a == nil {
		return nil, apiErr(ErrCodeClientKey, "配置无效")
	}
	if subtle.ConstantTimeCompare([]byte(q.ClientSecret), []byte(a.secret)) != 1 {
		e.appCountLocked(q.ClientKey, OpClientToken, func(k *AppCounters) { k.Credentials++ })
		return nil, apiErr(ErrCodeClientSecret, "client_key 或 client_secret 错误")
	}
	if strings.HasPrefix(c.r.URL.Path, strings.TrimSuffix(PathStableClientToken, "/")) {
		// Within its life the stable token is the same one, idempotently.
		if t := e.tokens[a.latest[OpClientToken]]; t != nil && t.usable(c.now) && !t.cut {
			e.appCountLocked(q.ClientKey, OpClientToken, func(k *AppCounters) { k.StableReturned++ })
			return appTokenData{AccessToken: a.latest[OpClientToken], ExpiresIn: seconds(t.expiry.Sub(c.now))}, nil
		}
	}
	kept := a.fetches[OpClientToken][:0]
	for _, t := range a.fetches[OpClientToken] {
		if c.now.Sub(t) < clientTokenWindow {
			kept = append(kept, t)
		}
	}
	a.fetches[OpClientToken] = kept
	if e.clientTokenRate > 0 && len(kept) >= e.clientTokenRate {
		e.appCountLocked(q.ClientKey, OpClientToken, func(k *AppCounters) { k.RateRefused++ })
		return nil, apiErr(ErrCodeClientRate, "请求太频繁: more than %d fetches in 5 minutes", e.clientTokenRate)
	}
	a.fetches[OpClientToken] = append(kept, c.now)
	return e.issueAppTokenLocked(c, a, q.ClientKey, OpClientToken), nil
}

// issueAppTokenLocked issues a new token of kind: the previous one keeps at
// most AppGrace, the one before dies.
func (e *Emulator) issueAppTokenLocked(c *call, a *appState, appid, kind string) appTokenData {
	if old := e.tokens[a.prev[kind]]; old != nil && old.usable(c.now) {
		e.appCountLocked(appid, kind, func(k *AppCounters) { k.KilledAsThird++ })
		e.log.Info("app token killed as the third newest while in its grace", zap.String("appid", appid), zap.String("kind", kind))
	}
	e.killLocked(a.prev[kind], "the third newest")
	if latest := e.tokens[a.latest[kind]]; latest != nil {
		if cut := c.now.Add(e.life.AppGrace); latest.expiry.After(cut) {
			latest.expiry, latest.cut = cut, true
			e.appCountLocked(appid, kind, func(k *AppCounters) { k.CutByGrace++ })
		}
		a.prev[kind] = a.latest[kind]
	}
	k := kindClient
	if kind == OpAppAccessToken {
		k = kindAppAccess
	}
	v := e.mintLocked(kind)
	e.tokens[v] = &token{kind: k, family: tokensource.V2, appid: appid, issued: c.now, expiry: c.now.Add(e.life.AppTokenTTL)}
	a.latest[kind] = v
	e.appCountLocked(appid, kind, func(k *AppCounters) { k.Fetches++ })
	e.log.Info("app token issued", zap.String("appid", appid), zap.String("kind", kind), fp(v))
	return appTokenData{AccessToken: v, ExpiresIn: seconds(e.life.AppTokenTTL)}
}

// appAPI is a sample API that takes an app token elsewhere than the v2
// headers, or answers a bad one in another dialect (docs/protocol.md §App
// credentials, how APIs take these tokens).
type appAPI struct {
	carrier string // "body", "query" or a canonical header name; "" the v2 headers
	dialect dialect
}

var appAPIs = map[string]appAPI{
	"/api/apps/qrcode":           {carrier: "body", dialect: dialectErrcode},
	"/api/apps/set_user_storage": {carrier: "query"},
	"/api/v2/tags/text/antidirt": {carrier: "X-Token"},
	"/js/getticket/":             {dialect: dialectDataErrorCode},
}

// appTokenOf is the token a v2 API call carries where its API takes it.
func appTokenOf(c *call) string {
	api := appAPIs[c.r.URL.Path]
	switch api.carrier {
	case "":
		return v2APIToken(c.r.Header)
	case "query":
		return c.r.URL.Query().Get("access_token")
	case "body":
		var b struct {
			AccessToken string `json:"access_token"`
		}
		_ = json.Unmarshal(c.body, &b)
		return b.AccessToken
	}
	return c.r.Header.Get(api.carrier)
}

// appDownstream answers a v2 API call made with an app token (or with no
// token or an unknown one at an app-only sample path); handled is false for
// the authorizer tokens downstream handles.
func (e *Emulator) appDownstream(c *call) (data any, aerr *apiError, handled bool) {
	api, sample := appAPIs[c.r.URL.Path]
	v := appTokenOf(c)
	t := e.tokens[v]
	kind := ""
	if t != nil {
		kind = appKindOf(t.kind)
	}
	if kind == "" && (!sample || api.carrier != "body" && api.carrier != "query") {
		// An authorizer's token, or none, in a header: downstream answers.
		// Authorizer tokens never travel in a body or the query of a v2 API.
		return nil, nil, false
	}
	bad := func(expired bool, why string) (any, *apiError, bool) {
		if kind != "" {
			e.appCountLocked(t.appid, kind, func(k *AppCounters) {
				if expired {
					k.DownstreamExpired++
				} else {
					k.DownstreamInvalid++
				}
			})
			c.appid = t.appid
		}
		return nil, badTokenError(api.dialect, expired, why), true
	}
	c.kind = kind
	switch {
	case t == nil || kind == "":
		return bad(false, "no app token where this API takes it")
	case t.dead:
		return bad(false, t.why)
	case !c.now.Before(t.expiry):
		return bad(true, "expired")
	}
	c.appid = t.appid
	e.appCountLocked(t.appid, kind, func(k *AppCounters) { k.DownstreamOK++ })
	return c.echo(t.appid), nil, true
}

// badTokenError is an invalid or expired token in an API's dialect.
func badTokenError(d dialect, expired bool, why string) *apiError {
	var aerr *apiError
	switch {
	case d == dialectErrcode:
		aerr = apiErr(ErrCodeBadToken, "access_token错误 (%s)", why)
	case d == dialectDataErrorCode && expired:
		aerr = apiErr(ErrCodeDataExpired, "access_token过期")
	case d == dialectDataErrorCode:
		aerr = apiErr(ErrCodeDataInvalid, "access_token无效 (%s)", why)
	case expired:
		aerr = apiErr(ErrNoV2AccessTokenExpired, "access_token过期,请刷新或重新授权")
	default:
		aerr = apiErr(ErrNoV2AccessTokenInvalid, "access_token无效 (%s)", why)
	}
	aerr.dialect = d
	return aerr
}

// appStatsLocked is the Stats form of the app counters.
func (e *Emulator) appStatsLocked() map[string]AppCounters {
	m := make(map[string]AppCounters, len(e.stats.apps))
	for k, v := range e.stats.apps {
		m[k.appid+"/"+k.kind] = *v
	}
	return m
}

// Apps lists the apps the emulator knows, sorted.
func (e *Emulator) Apps() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	ids := make([]string, 0, len(e.apps))
	for id := range e.apps {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// appControl answers POST /_emulator/apps {"appid","secret"} and POST
// /_emulator/apps/<appid>/<kind>/revoke.
func (e *Emulator) appControl(w http.ResponseWriter, r *http.Request, fail func(int, error), ok func()) {
	rest := strings.TrimPrefix(r.URL.Path, "/_emulator/apps")
	if r.Method != http.MethodPost {
		fail(http.StatusMethodNotAllowed, fmt.Errorf("use POST on %s", r.URL.Path))
		return
	}
	if rest == "" || rest == "/" {
		var q AppCred
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&q); err != nil {
			fail(http.StatusBadRequest, fmt.Errorf("bad JSON body: %v", err))
			return
		}
		if err := e.AddApp(q.AppID, q.Secret); err != nil {
			fail(http.StatusBadRequest, err)
			return
		}
		ok()
		return
	}
	parts := strings.Split(strings.Trim(rest, "/"), "/")
	if len(parts) != 3 || parts[2] != "revoke" {
		fail(http.StatusNotFound, fmt.Errorf("no control route %s %s (POST /_emulator/apps/<appid>/<kind>/revoke)", r.Method, r.URL.Path))
		return
	}
	appid, _ := url.PathUnescape(parts[0])
	if !e.RevokeAppToken(appid, parts[1]) {
		fail(http.StatusNotFound, fmt.Errorf("no %s issued to app %q", parts[1], appid))
		return
	}
	ok()
}

// rateRefused answers a fetch refused by the RateLimited fault.
func (e *Emulator) rateRefused(w http.ResponseWriter, rt route, op string, r *http.Request, body []byte) {
	e.mu.Lock()
	appid := e.subjectLocked(op, rt.family, r, body)
	e.appCountLocked(appid, op, func(k *AppCounters) { k.RateRefused++ })
	logID := e.logIDLocked(e.now())
	e.mu.Unlock()
	if op == OpAppAccessToken {
		http.Error(w, "429 Too Many Requests (emulated)", http.StatusTooManyRequests)
		return
	}
	writeAnswer(w, rt, http.StatusOK, nil, apiErr(ErrCodeClientRate, "请求太频繁 (emulated)"), logID)
}

// bodyTokenFields counts the top-level access_token fields of a JSON object
// body (a proxy that left a client's copy next to the one it put shows 2).
func bodyTokenFields(b []byte) int {
	if len(b) == 0 || !strings.Contains(string(b), `"access_token"`) {
		return 0
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return 0
	}
	n := 0
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return n
		}
		if k == "access_token" {
			n++
		}
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return n
		}
	}
	return n
}
