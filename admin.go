package tptoken

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI is the `admin.api.tptoken` module: operator routes under /tptoken/
// on Caddy's admin endpoint. Every answer is JSON; none holds a token, a
// ticket or a secret (records are shown through tokensource.Info).
//
//	GET    /tptoken/authorizers[?after=<appid>&limit=<n>&component=<appid>]
//	GET    /tptoken/authorizers/<appid>
//	DELETE /tptoken/authorizers/<appid>
//	POST   /tptoken/authorizers/<appid>/code     {"authorization_code": "..."}
//	POST   /tptoken/authorizers/<appid>/refresh
//	POST   /tptoken/authorizers/<appid>/recover[?new=1]
//	POST   /tptoken/code                        {"authorization_code": "...", "appid"?: "..."}
//	POST   /tptoken/lookup                      {"appids": ["...", ...]}
//	POST   /tptoken/import                      [{"appid", "authorizer_refresh_token", "refresh_expires_at"?}, ...]
//	POST   /tptoken/reseal
//	POST   /tptoken/rebuild[?component=<appid>]  {"verify"?, "overwrite_unreadable"?, "rate"?, "appids"?}
//	GET    /tptoken/component[?component=<appid>]
//	POST   /tptoken/check-storage[?hold=<duration>]   (NDJSON, admin_storagecheck.go)
//	GET    /tptoken/apps[/<appid>[/<kind>]]     apps' own tokens (admin_apps.go)
//	POST   /tptoken/apps/<appid>/<kind>/refresh
//
// import and rebuild stream NDJSON progress with Accept: application/x-ndjson
// (admin_rebuild.go).
//
// With several components, ?component= names one; routes about one authorizer
// infer it when the appid has a record under exactly one component. Errors
// never repeat an appid that has no record (it may be a token pasted in the
// wrong place): they give its fingerprint. Caddy's admin endpoint itself logs
// every request URI at INFO, so an appid in a URL reaches that log; the CLI
// puts only appids with a record in URLs (it asks /tptoken/lookup first).
//
// Caddy's admin endpoint has no authentication: keep it on localhost or a unix
// socket, or use remote admin with mTLS.
type adminAPI struct {
	comps   map[string]*component // a snapshot: the app's own map is released on unload
	order   []string
	storage *storageTarget // the app's storage (check-storage)
	err     error          // why there is no app
	log     *zap.Logger

	apps     map[appTokenKey]*appToken // apps' own tokens (admin_apps.go)
	appOrder []appTokenKey
}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.tptoken", New: func() caddy.Module { return new(adminAPI) }}
}

// Provision finds the tptoken app of the config being loaded. Admin routers
// are provisioned for every config, with or without the app: without it, the
// routes answer an error that says so.
func (a *adminAPI) Provision(ctx caddy.Context) error {
	a.log = ctx.Logger(a)
	v, err := ctx.AppIfConfigured("tptoken")
	if err != nil {
		if errors.Is(err, caddy.ErrNotConfigured) {
			err = errors.New("the tptoken app is not configured in the running config: add a `tptoken { ... }` global option (or apps.tptoken in JSON)")
		}
		a.err = err
		return nil
	}
	app := v.(*App)
	a.comps = make(map[string]*component, len(app.comps))
	for id, c := range app.comps {
		a.comps[id] = c
	}
	a.order = append([]string(nil), app.order...)
	a.storage = app.target
	a.apps = make(map[appTokenKey]*appToken, len(app.apps))
	for k, t := range app.apps {
		a.apps[k] = t
	}
	a.appOrder = append([]appTokenKey(nil), app.appOrder...)
	return nil
}

// Routes returns the admin routes.
func (a *adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: adminPrefix, Handler: caddy.AdminHandlerFunc(a.serve)}}
}

const (
	adminPrefix      = "/tptoken/"
	maxAdminBody     = 64 << 10 // a code, or an empty POST
	maxImportBody    = 4 << 20
	maxImportRows    = 1000
	maxListLimit     = 1000
	defaultListLimit = 100
	importWorkers    = 4
)

func (a *adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.Path, adminPrefix)
	parts := strings.Split(strings.TrimSuffix(rest, "/"), "/")
	switch {
	case parts[0] == "authorizers" && len(parts) == 1:
		if err := allowMethods(w, r, http.MethodGet); err != nil {
			return err
		}
		return a.withComponent(w, r, a.list)
	case parts[0] == "authorizers" && len(parts) == 2:
		if err := allowMethods(w, r, http.MethodGet, http.MethodDelete); err != nil {
			return err
		}
		if r.Method == http.MethodDelete {
			return a.withAuthorizer(w, r, parts[1], a.forget)
		}
		return a.withAuthorizer(w, r, parts[1], a.show)
	case parts[0] == "authorizers" && len(parts) == 3:
		var h func(http.ResponseWriter, *http.Request, *component, string) error
		switch parts[2] {
		case "code":
			h = a.code
		case "refresh":
			h = a.refresh
		case "recover":
			h = a.recover
		default:
			return notFound(r)
		}
		if err := allowMethods(w, r, http.MethodPost); err != nil {
			return err
		}
		return a.withAuthorizer(w, r, parts[1], h)
	case rest == "import":
		if err := allowMethods(w, r, http.MethodPost); err != nil {
			return err
		}
		return a.importTokens(w, r)
	case rest == "auth-link":
		return a.authLink(w, r)
	case rest == "component":
		if err := allowMethods(w, r, http.MethodGet); err != nil {
			return err
		}
		return a.components(w, r)
	case rest == "code":
		if err := allowMethods(w, r, http.MethodPost); err != nil {
			return err
		}
		return a.withComponent(w, r, a.codeOnly)
	case rest == "lookup":
		if err := allowMethods(w, r, http.MethodPost); err != nil {
			return err
		}
		return a.lookup(w, r)
	case rest == "reseal":
		if err := allowMethods(w, r, http.MethodPost); err != nil {
			return err
		}
		return a.reseal(w, r)
	case rest == "check-storage":
		if err := allowMethods(w, r, http.MethodPost); err != nil {
			return err
		}
		return a.checkStorage(w, r)
	case rest == "rebuild":
		if err := allowMethods(w, r, http.MethodPost); err != nil {
			return err
		}
		return a.withComponent(w, r, a.rebuild)
	case parts[0] == "apps":
		return a.serveApps(w, r, parts[1:])
	}
	return notFound(r)
}

func notFound(r *http.Request) error {
	return caddy.APIError{HTTPStatus: http.StatusNotFound,
		Err: fmt.Errorf("no tptoken route %s %s: see /tptoken/authorizers, /tptoken/import, /tptoken/lookup, /tptoken/code, /tptoken/reseal, /tptoken/rebuild, /tptoken/component, /tptoken/check-storage, /tptoken/apps", r.Method, r.URL.Path)}
}

func allowMethods(w http.ResponseWriter, r *http.Request, methods ...string) error {
	for _, m := range methods {
		if r.Method == m {
			return nil
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed,
		Err: fmt.Errorf("method %s not allowed on %s: use %s", r.Method, r.URL.Path, strings.Join(methods, " or "))}
}

// pick selects the component named by ?component=, or the only one.
func (a *adminAPI) pick(r *http.Request) (*component, error) {
	if a.err != nil {
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: a.err}
	}
	name := r.URL.Query().Get("component")
	if name != "" {
		if !tokensource.ValidAppID(name) {
			return nil, caddy.APIError{HTTPStatus: http.StatusBadRequest,
				Err: errors.New("component: want a component appid (" + appIDShape + ")")}
		}
		c, ok := a.comps[name]
		if !ok {
			return nil, caddy.APIError{HTTPStatus: http.StatusNotFound,
				Err: fmt.Errorf("component %s is not configured; configured: %s", name, strings.Join(a.order, ", "))}
		}
		return c, nil
	}
	switch len(a.order) {
	case 0:
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound,
			Err: errors.New("the tptoken app has no component: add a `tptoken { component_appid ... }` global option")}
	case 1:
		return a.comps[a.order[0]], nil
	}
	return nil, caddy.APIError{HTTPStatus: http.StatusBadRequest,
		Err: fmt.Errorf("several components are configured (%s): name one, for example ?component=%s", strings.Join(a.order, ", "), a.order[0])}
}

// selected is the component named by ?component=, or every configured one.
func (a *adminAPI) selected(r *http.Request) ([]*component, error) {
	if a.err != nil || r.URL.Query().Get("component") != "" {
		c, err := a.pick(r)
		if err != nil {
			return nil, err
		}
		return []*component{c}, nil
	}
	comps := make([]*component, 0, len(a.order))
	for _, id := range a.order {
		comps = append(comps, a.comps[id])
	}
	return comps, nil
}

func (a *adminAPI) withComponent(w http.ResponseWriter, r *http.Request, h func(http.ResponseWriter, *http.Request, *component) error) error {
	c, err := a.pick(r)
	if err != nil {
		return err
	}
	return h(w, r, c)
}

func (a *adminAPI) withAuthorizer(w http.ResponseWriter, r *http.Request, appid string,
	h func(http.ResponseWriter, *http.Request, *component, string) error) error {
	if !tokensource.ValidAppID(appid) {
		if a.err != nil {
			return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: a.err}
		}
		return apiError(w, tokensource.CheckAppID(appid))
	}
	c, err := a.pickFor(r, appid)
	if err != nil {
		return err
	}
	return h(w, r, c, appid)
}

// pickFor selects the component for a route about appid: the one named by
// ?component=, the only one, or the only one holding a record of appid. An
// appid with records under several components, or under none where a new
// authorizer is meant (a code, a recovery ?new=1), needs ?component=.
func (a *adminAPI) pickFor(r *http.Request, appid string) (*component, error) {
	if a.err != nil || r.URL.Query().Get("component") != "" || len(a.order) < 2 {
		return a.pick(r)
	}
	holders, err := a.holders(r.Context(), appid)
	if err != nil {
		return nil, err
	}
	switch {
	case len(holders) == 1:
		return holders[0], nil
	case len(holders) > 1:
		return nil, caddy.APIError{HTTPStatus: http.StatusBadRequest,
			Err: fmt.Errorf("authorizer %s has records under several components (%s): name one with ?component=", appid, componentNames(holders))}
	}
	newAuthorizer := strings.HasSuffix(r.URL.Path, "/code") || r.URL.Query().Get("new") != ""
	if newAuthorizer {
		return nil, caddy.APIError{HTTPStatus: http.StatusBadRequest,
			Err: fmt.Errorf("several components are configured (%s) and none holds a record of this appid: name the one it belongs to, for example ?component=%s",
				strings.Join(a.order, ", "), a.order[0])}
	}
	return nil, caddy.APIError{HTTPStatus: http.StatusNotFound,
		Err: fmt.Errorf("no component (%s) holds a record of this appid (fingerprint %s)", strings.Join(a.order, ", "), tokensource.Secret(appid).Fingerprint())}
}

// holders are the components holding a record of appid. A storage failure is
// an error: the answer would be a guess.
func (a *adminAPI) holders(ctx context.Context, appid string) ([]*component, error) {
	var out []*component
	for _, id := range a.order {
		c := a.comps[id]
		_, err := c.engine.Info(ctx, appid)
		switch {
		case err == nil:
			out = append(out, c)
		case tokensource.KindOf(err) == tokensource.KindUnknownAuthorizer:
		default:
			return nil, caddy.APIError{HTTPStatus: http.StatusServiceUnavailable,
				Err: fmt.Errorf("cannot tell which component holds this appid (reading component %s: %v): name one with ?component=", id, tokensource.WithoutAppID(err, appid))}
		}
	}
	return out, nil
}

func componentNames(cs []*component) string {
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = c.appID
	}
	return strings.Join(names, ", ")
}

// apiError maps an engine error to the admin API's error and status. Engine
// errors name the appid and what to do, and never hold a secret; an error
// about an appid with no record gives its fingerprint instead (see
// unknownAppIDError).
func apiError(w http.ResponseWriter, err error) error {
	status := http.StatusInternalServerError
	var ee *tokensource.Error
	if errors.As(err, &ee) && ee.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((ee.RetryAfter+time.Second-1)/time.Second)))
	}
	switch tokensource.KindOf(err) {
	case tokensource.KindBadAppID, tokensource.KindBadInput:
		status = http.StatusBadRequest
	case tokensource.KindUnknownAuthorizer:
		status = http.StatusNotFound
	case tokensource.KindUnauthorized, tokensource.KindFamilyMismatch:
		status = http.StatusConflict
	case tokensource.KindUnavailable, tokensource.KindNoTicket:
		status = http.StatusServiceUnavailable
	case tokensource.KindPlatform:
		status = http.StatusBadGateway
	case tokensource.KindTimeout:
		status = http.StatusGatewayTimeout
	case tokensource.KindRateLimited:
		status = http.StatusTooManyRequests
	case tokensource.KindBusy:
		status = http.StatusConflict
	}
	return caddy.APIError{HTTPStatus: status, Err: err}
}

// unknownAppIDError is apiError for an operation on appid: when the error
// says there is no record of appid, its text gives the appid's fingerprint,
// not the appid.
func unknownAppIDError(w http.ResponseWriter, err error, appid string) error {
	if tokensource.KindOf(err) == tokensource.KindUnknownAuthorizer {
		err = tokensource.WithoutAppID(err, appid)
	}
	return apiError(w, err)
}

func writeJSON(w http.ResponseWriter, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(append(b, '\n'))
	return err
}

// readBody reads a JSON body of at most limit bytes into v; unknown fields are
// errors, so a misspelt field is not silently ignored. Errors never quote the body.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return caddy.APIError{HTTPStatus: http.StatusRequestEntityTooLarge,
				Err: fmt.Errorf("body larger than %d bytes", limit)}
		}
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("cannot read the body")}
	}
	if err := decodeStrict(b, v); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
	}
	return nil
}

func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("body is not the expected JSON: %s", jsonErrorText(err))
	}
	if dec.More() {
		return errors.New("body is not the expected JSON: data after the value")
	}
	return nil
}

// jsonErrorText describes a decoding error without quoting the input.
func jsonErrorText(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	case errors.As(err, &te):
		if te.Field != "" {
			return fmt.Sprintf("field %s: want a %s, got a JSON %s", te.Field, te.Type, te.Value)
		}
		return fmt.Sprintf("want a %s, got a JSON %s", te.Type, te.Value)
	case errors.Is(err, io.EOF):
		return "empty body"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated JSON"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return strings.TrimPrefix(err.Error(), "json: ")
	case !strings.HasPrefix(err.Error(), "json:"):
		return err.Error() // from our own UnmarshalJSON (flexTime): never quotes the input
	}
	return "invalid JSON"
}

// authorizerList is the answer of GET /tptoken/authorizers.
type authorizerList struct {
	ComponentAppID string             `json:"component_appid"`
	Family         tokensource.Family `json:"family"`
	Authorizers    []tokensource.Info `json:"authorizers"`
	// Next is the `after` of the next page; "" on the last page.
	Next string `json:"next,omitempty"`
}

func (a *adminAPI) list(w http.ResponseWriter, r *http.Request, c *component) error {
	q := r.URL.Query()
	after := q.Get("after")
	if after != "" && !tokensource.ValidAppID(after) {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("after: want an authorizer appid")}
	}
	limit := defaultListLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxListLimit {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("limit: want 1 to %d", maxListLimit)}
		}
		limit = n
	}
	infos, next, err := c.engine.List(r.Context(), after, limit)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: fmt.Errorf("listing authorizer records: %w", err)}
	}
	return writeJSON(w, authorizerList{ComponentAppID: c.appID, Family: c.family, Authorizers: infos, Next: next})
}

func (a *adminAPI) show(w http.ResponseWriter, r *http.Request, c *component, appid string) error {
	info, err := c.engine.Info(r.Context(), appid)
	if err != nil {
		return unknownAppIDError(w, err, appid)
	}
	return writeJSON(w, info)
}

func (a *adminAPI) forget(w http.ResponseWriter, r *http.Request, c *component, appid string) error {
	if _, err := c.engine.Info(r.Context(), appid); err != nil {
		return unknownAppIDError(w, err, appid)
	}
	if err := c.engine.Forget(r.Context(), appid); err != nil {
		return apiError(w, err)
	}
	metricsFor(c.appID).forget(appid) // the engine logs the deletion
	return writeJSON(w, map[string]any{"appid": appid, "deleted": true})
}

type codeRequest struct {
	AuthorizationCode string `json:"authorization_code"`
	// AppID, for POST /tptoken/code: the authorizer the code must belong to
	// (optional: the platform's answer names it).
	AppID string `json:"appid,omitempty"`
}

func (a *adminAPI) code(w http.ResponseWriter, r *http.Request, c *component, appid string) error {
	var body codeRequest
	if err := readBody(w, r, maxAdminBody, &body); err != nil {
		return err
	}
	if body.AppID != "" && body.AppID != appid {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("the body's appid differs from the one in the path; leave it out")}
	}
	return a.exchange(w, r, c, appid, body.AuthorizationCode)
}

// codeOnly is POST /tptoken/code: a code seeded with the appid in the body or
// none at all (the platform's answer names the authorizer), so that no
// unconfirmed appid reaches a URL.
func (a *adminAPI) codeOnly(w http.ResponseWriter, r *http.Request, c *component) error {
	var body codeRequest
	if err := readBody(w, r, maxAdminBody, &body); err != nil {
		return err
	}
	body.AppID = strings.TrimSpace(body.AppID)
	if body.AppID != "" && !tokensource.ValidAppID(body.AppID) {
		return apiError(w, tokensource.CheckAppID(body.AppID))
	}
	return a.exchange(w, r, c, body.AppID, body.AuthorizationCode)
}

func (a *adminAPI) exchange(w http.ResponseWriter, r *http.Request, c *component, appid, code string) error {
	code = strings.TrimSpace(code)
	if code == "" {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New(`body: want {"authorization_code": "<code>"}`)}
	}
	info, err := c.engine.ExchangeCode(r.Context(), appid, tokensource.Secret(code))
	if err != nil {
		// The exchange did not confirm appid: its text stays out of the answer.
		return apiError(w, tokensource.WithoutAppID(withheld(err, code), appid))
	}
	return writeJSON(w, info)
}

// readEmptyBody accepts an action POST with no body or an empty JSON object.
func readEmptyBody(w http.ResponseWriter, r *http.Request) error {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusRequestEntityTooLarge, Err: fmt.Errorf("body larger than %d bytes", maxAdminBody)}
	}
	if s := strings.TrimSpace(string(b)); s != "" && s != "{}" {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("this action takes no body")}
	}
	return nil
}

func (a *adminAPI) refresh(w http.ResponseWriter, r *http.Request, c *component, appid string) error {
	if err := readEmptyBody(w, r); err != nil {
		return err
	}
	info, err := c.engine.Refresh(r.Context(), appid)
	if err != nil {
		return unknownAppIDError(w, err, appid)
	}
	return writeJSON(w, info)
}

// recover recovers an authorizer on record; with ?new=1 also one tptoken has no
// record of (nothing is stored if that fails).
func (a *adminAPI) recover(w http.ResponseWriter, r *http.Request, c *component, appid string) error {
	if err := readEmptyBody(w, r); err != nil {
		return err
	}
	allowNew := false
	switch v := r.URL.Query().Get("new"); v {
	case "", "0", "false":
	case "1", "true":
		allowNew = true
	default:
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("new: want 1 or true (recover an appid with no record) or leave it out")}
	}
	info, err := c.engine.Recover(r.Context(), appid, allowNew)
	if err != nil {
		return unknownAppIDError(w, err, appid)
	}
	return writeJSON(w, info)
}

// withheld replaces an error whose text quotes secret (it never should).
func withheld(err error, secret string) error {
	if err != nil && secret != "" && strings.Contains(err.Error(), secret) {
		return &tokensource.Error{Kind: tokensource.KindOf(err), Msg: "failed (error text withheld: it quoted a secret)"}
	}
	return err
}

// componentStatus is what GET /tptoken/component shows of one component.
type componentStatus struct {
	tokensource.ComponentInfo
	// TokenExpiresInSeconds: seconds until the component token expires.
	TokenExpiresInSeconds float64 `json:"component_token_expires_in_seconds,omitempty"`
}

// componentsAnswer is the answer of GET /tptoken/component.
type componentsAnswer struct {
	Components []componentStatus `json:"components"`
}

func (a *adminAPI) components(w http.ResponseWriter, r *http.Request) error {
	comps, err := a.selected(r)
	if err != nil {
		return err
	}
	out := componentsAnswer{Components: []componentStatus{}}
	for _, c := range comps {
		st := componentStatus{ComponentInfo: c.engine.ComponentInfo(r.Context())}
		if !st.TokenExpiry.IsZero() {
			st.TokenExpiresInSeconds = time.Until(st.TokenExpiry).Round(time.Second).Seconds()
		}
		out.Components = append(out.Components, st)
	}
	return writeJSON(w, out)
}

// lookupRequest is the body of POST /tptoken/lookup.
type lookupRequest struct {
	AppIDs []string `json:"appids"`
}

// lookupResult says which components hold a record of one appid of a lookup.
type lookupResult struct {
	// AppID is the appid when some component holds a record of it; otherwise
	// it is not repeated, and Fingerprint identifies it.
	AppID       string   `json:"appid,omitempty"`
	Fingerprint string   `json:"fingerprint,omitempty"`
	Components  []string `json:"components"`
}

type lookupAnswer struct {
	Results []lookupResult `json:"results"` // in the order asked
}

// lookup tells, for appids given in the body (never in the URL, which Caddy
// logs), which components hold a record of each: the CLI's way to confirm an
// appid and find its component before naming it in a URL.
func (a *adminAPI) lookup(w http.ResponseWriter, r *http.Request) error {
	if a.err != nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: a.err}
	}
	var body lookupRequest
	if err := readBody(w, r, maxImportBody, &body); err != nil {
		return err
	}
	if len(body.AppIDs) > maxImportRows {
		return caddy.APIError{HTTPStatus: http.StatusRequestEntityTooLarge, Err: fmt.Errorf("%d appids: look up at most %d at once", len(body.AppIDs), maxImportRows)}
	}
	comps, err := a.selected(r)
	if err != nil {
		return err
	}
	ans := lookupAnswer{Results: make([]lookupResult, len(body.AppIDs))}
	for i, appid := range body.AppIDs {
		res := lookupResult{Components: []string{}}
		if tokensource.ValidAppID(appid) {
			for _, c := range comps {
				_, err := c.engine.Info(r.Context(), appid)
				switch {
				case err == nil:
					res.Components = append(res.Components, c.appID)
				case tokensource.KindOf(err) != tokensource.KindUnknownAuthorizer:
					return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable,
						Err: fmt.Errorf("reading records of component %s: %v", c.appID, tokensource.WithoutAppID(err, appid))}
				}
			}
		}
		if len(res.Components) > 0 {
			res.AppID = appid
		} else {
			res.Fingerprint = tokensource.Secret(appid).Fingerprint()
		}
		ans.Results[i] = res
	}
	return writeJSON(w, ans)
}

// resealAnswer is the answer of POST /tptoken/reseal.
type resealAnswer struct {
	Components []tokensource.ResealReport `json:"components"`
}

// reseal seals every record of the named component (or of all) with its
// current encryption_key: the last step of a key rotation.
func (a *adminAPI) reseal(w http.ResponseWriter, r *http.Request) error {
	if err := readEmptyBody(w, r); err != nil {
		return err
	}
	comps, err := a.selected(r)
	if err != nil {
		return err
	}
	ans := resealAnswer{Components: []tokensource.ResealReport{}}
	for _, c := range comps {
		rep, err := c.engine.Reseal(r.Context())
		if err != nil {
			return apiError(w, fmt.Errorf("component %s: %w", c.appID, err))
		}
		ans.Components = append(ans.Components, rep)
	}
	return writeJSON(w, ans)
}

// Interface guards
var (
	_ caddy.Provisioner = (*adminAPI)(nil)
	_ caddy.AdminRouter = (*adminAPI)(nil)
)
