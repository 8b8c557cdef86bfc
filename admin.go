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
	"sync"
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
//	POST   /tptoken/authorizers/<appid>/recover
//	POST   /tptoken/import                      [{"appid", "authorizer_refresh_token", "refresh_expires_at"?}, ...]
//	GET    /tptoken/component[?component=<appid>]
//
// Caddy's admin endpoint has no authentication: keep it on localhost or a unix
// socket, or use remote admin with mTLS.
type adminAPI struct {
	comps map[string]*component // a snapshot: the app's own map is released on unload
	order []string
	err   error // why there is no app
	log   *zap.Logger
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
		return a.withComponent(w, r, a.importTokens)
	case rest == "auth-link":
		return a.authLink(w, r)
	case rest == "component":
		if err := allowMethods(w, r, http.MethodGet); err != nil {
			return err
		}
		return a.components(w, r)
	}
	return notFound(r)
}

func notFound(r *http.Request) error {
	return caddy.APIError{HTTPStatus: http.StatusNotFound,
		Err: fmt.Errorf("no tptoken route %s %s: see /tptoken/authorizers, /tptoken/import, /tptoken/component", r.Method, r.URL.Path)}
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
				Err: errors.New("component: want a component appid (1-64 letters, digits, '_' or '-')")}
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

func (a *adminAPI) withComponent(w http.ResponseWriter, r *http.Request, h func(http.ResponseWriter, *http.Request, *component) error) error {
	c, err := a.pick(r)
	if err != nil {
		return err
	}
	return h(w, r, c)
}

func (a *adminAPI) withAuthorizer(w http.ResponseWriter, r *http.Request, appid string,
	h func(http.ResponseWriter, *http.Request, *component, string) error) error {
	c, err := a.pick(r)
	if err != nil {
		return err
	}
	if !tokensource.ValidAppID(appid) {
		return apiError(w, tokensource.CheckAppID(appid))
	}
	return h(w, r, c, appid)
}

// apiError maps an engine error to the admin API's error and status. Engine
// errors name the appid and what to do, and never hold a secret.
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
	}
	return caddy.APIError{HTTPStatus: status, Err: err}
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
		return apiError(w, err)
	}
	return writeJSON(w, info)
}

func (a *adminAPI) forget(w http.ResponseWriter, r *http.Request, c *component, appid string) error {
	if _, err := c.engine.Info(r.Context(), appid); err != nil {
		return apiError(w, err)
	}
	if err := c.engine.Forget(r.Context(), appid); err != nil {
		return apiError(w, err)
	}
	metricsFor(c.appID).forget(appid) // the engine logs the deletion
	return writeJSON(w, map[string]any{"appid": appid, "deleted": true})
}

type codeRequest struct {
	AuthorizationCode string `json:"authorization_code"`
}

func (a *adminAPI) code(w http.ResponseWriter, r *http.Request, c *component, appid string) error {
	var body codeRequest
	if err := readBody(w, r, maxAdminBody, &body); err != nil {
		return err
	}
	code := strings.TrimSpace(body.AuthorizationCode)
	if code == "" {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New(`body: want {"authorization_code": "<code>"}`)}
	}
	info, err := c.engine.ExchangeCode(r.Context(), appid, tokensource.Secret(code), time.Time{})
	if err != nil {
		return apiError(w, withheld(err, code))
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
		return apiError(w, err)
	}
	return writeJSON(w, info)
}

func (a *adminAPI) recover(w http.ResponseWriter, r *http.Request, c *component, appid string) error {
	if err := readEmptyBody(w, r); err != nil {
		return err
	}
	info, err := c.engine.Recover(r.Context(), appid)
	if err != nil {
		return apiError(w, err)
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

// importRow is one legacy refresh token to import.
type importRow struct {
	AppID        string `json:"appid"`
	RefreshToken string `json:"authorizer_refresh_token"`
	// RefreshExpiresAt is when the legacy store says the refresh token expires:
	// an RFC 3339 time or Unix seconds. Optional.
	RefreshExpiresAt flexTime `json:"refresh_expires_at,omitzero"`
}

// flexTime is an RFC 3339 string or a number of Unix seconds.
type flexTime struct{ time.Time }

func (t *flexTime) UnmarshalJSON(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "null" || s == `""` {
		return nil
	}
	if strings.HasPrefix(s, `"`) {
		var str string
		if err := json.Unmarshal(b, &str); err != nil {
			return err
		}
		v, err := parseExpiry(str)
		if err != nil {
			return err
		}
		t.Time = v
		return nil
	}
	v, err := parseExpiry(s)
	if err != nil {
		return err
	}
	t.Time = v
	return nil
}

func (t flexTime) MarshalJSON() ([]byte, error) { return json.Marshal(t.Time) }

// parseExpiry reads an RFC 3339 time or Unix seconds.
func parseExpiry(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n <= 0 {
			return time.Time{}, errors.New("refresh_expires_at: want a positive Unix time")
		}
		return time.Unix(n, 0), nil
	}
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, errors.New("refresh_expires_at: want an RFC 3339 time (2026-01-02T15:04:05Z) or Unix seconds")
	}
	return v, nil
}

// importRowResult is the outcome of one row: tokensource.ImportResult plus
// the row's position (1-based) in the request.
type importRowResult struct {
	Row int `json:"row"`
	tokensource.ImportResult
}

// importAnswer is the answer of POST /tptoken/import.
type importAnswer struct {
	ComponentAppID string            `json:"component_appid"`
	Results        []importRowResult `json:"results"`
	Counts         map[string]int    `json:"counts"` // by result
}

// importTokens takes over refresh tokens from a legacy store. Each row is
// verified by one refresh under the authorizer's lock; a rejected token is
// recovered when the authorization still exists. Bad rows are reported and
// the good ones kept; importing the same rows again changes nothing.
func (a *adminAPI) importTokens(w http.ResponseWriter, r *http.Request, c *component) error {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxImportBody))
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusRequestEntityTooLarge,
			Err: fmt.Errorf("body larger than %d bytes: import in batches of at most %d rows", maxImportBody, maxImportRows)}
	}
	var raw []json.RawMessage
	if err := decodeStrict(b, &raw); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest,
			Err: fmt.Errorf(`%v: want a JSON array of {"appid", "authorizer_refresh_token", "refresh_expires_at"?}`, err)}
	}
	if len(raw) == 0 {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("no rows to import")}
	}
	if len(raw) > maxImportRows {
		return caddy.APIError{HTTPStatus: http.StatusRequestEntityTooLarge,
			Err: fmt.Errorf("%d rows: import in batches of at most %d", len(raw), maxImportRows)}
	}

	results := make([]importRowResult, len(raw))
	rows := make([]importRow, len(raw))
	byApp := map[string][]int{} // rows of one appid run in order, one after the other
	var apps []string
	for i, m := range raw {
		results[i].Row = i + 1
		if err := decodeStrict(m, &rows[i]); err != nil {
			results[i].Result, results[i].Detail = "failed", strings.Replace(err.Error(), "body", "row", 1)
			continue
		}
		rows[i].AppID = strings.TrimSpace(rows[i].AppID)
		rows[i].RefreshToken = strings.TrimSpace(rows[i].RefreshToken)
		if !tokensource.ValidAppID(rows[i].AppID) {
			// Not echoed: with swapped columns it would be the refresh token.
			results[i].Result, results[i].Detail = "failed", "invalid appid (want 1-64 letters, digits, '_' or '-'; not echoed back)"
			continue
		}
		results[i].AppID = rows[i].AppID
		if _, seen := byApp[rows[i].AppID]; !seen {
			apps = append(apps, rows[i].AppID)
		}
		byApp[rows[i].AppID] = append(byApp[rows[i].AppID], i)
	}

	// A few authorizers at a time: each import is a platform call under a lock.
	ctx := r.Context()
	jobs := make(chan string)
	var wg sync.WaitGroup
	for range min(importWorkers, len(apps)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for appid := range jobs {
				for _, i := range byApp[appid] {
					results[i].ImportResult = a.importOne(ctx, c, rows[i])
				}
			}
		}()
	}
	for _, appid := range apps {
		jobs <- appid
	}
	close(jobs)
	wg.Wait()

	ans := importAnswer{ComponentAppID: c.appID, Results: results, Counts: map[string]int{}}
	for _, res := range results {
		ans.Counts[res.Result]++
	}
	a.log.Info("legacy refresh tokens imported through the admin API", zap.String("component_appid", c.appID),
		zap.Int("rows", len(rows)), zap.Any("counts", ans.Counts))
	return writeJSON(w, ans)
}

func (a *adminAPI) importOne(ctx context.Context, c *component, row importRow) tokensource.ImportResult {
	if ctx.Err() != nil {
		return tokensource.ImportResult{AppID: row.AppID, Result: "failed", Detail: "not attempted: the request was cancelled"}
	}
	res := c.engine.Import(ctx, row.AppID, tokensource.Secret(row.RefreshToken), row.RefreshExpiresAt.Time)
	if row.RefreshToken != "" && strings.Contains(res.Detail, row.RefreshToken) {
		res.Detail = "error text withheld: it quoted the refresh token"
	}
	return res
}

// componentStatus is what GET /tptoken/component shows of one component.
type componentStatus struct {
	tokensource.ComponentInfo
	// TokenExpiresInSeconds: seconds until the component token expires.
	TokenExpiresInSeconds float64 `json:"component_token_expires_in_seconds,omitempty"`
	// Sweep is what the last sweep of storage found (absent before the first).
	Sweep *tokensource.Summary `json:"sweep,omitempty"`
}

// componentsAnswer is the answer of GET /tptoken/component.
type componentsAnswer struct {
	Components []componentStatus `json:"components"`
}

func (a *adminAPI) components(w http.ResponseWriter, r *http.Request) error {
	var comps []*component
	if a.err == nil && r.URL.Query().Get("component") == "" {
		for _, id := range a.order {
			comps = append(comps, a.comps[id])
		}
	} else {
		c, err := a.pick(r)
		if err != nil {
			return err
		}
		comps = []*component{c}
	}
	out := componentsAnswer{Components: []componentStatus{}}
	for _, c := range comps {
		st := componentStatus{ComponentInfo: c.engine.ComponentInfo(r.Context())}
		if !st.TokenExpiry.IsZero() {
			st.TokenExpiresInSeconds = time.Until(st.TokenExpiry).Round(time.Second).Seconds()
		}
		if sum := c.engine.LastSummary(); !sum.At.IsZero() {
			st.Sweep = &sum
		}
		out.Components = append(out.Components, st)
	}
	return writeJSON(w, out)
}

// Interface guards
var (
	_ caddy.Provisioner = (*adminAPI)(nil)
	_ caddy.AdminRouter = (*adminAPI)(nil)
)
