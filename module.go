// Package tptoken is a Caddy v2 plugin for service providers (服务商) on the
// Douyin / ByteDance open platform: legacy apps send open-API requests through
// Caddy naming an authorizer appid, and tptoken injects a valid
// authorizer_access_token (or component token) before reverse_proxy forwards them.
//
// The token engine lives in package tokensource; this package is the Caddy glue:
// the `tptoken` app (one engine per component appid, surviving config reloads),
// the `tptoken` handler, the `tptoken` reverse_proxy transport that puts the
// token on the outgoing request only, and the `tptoken_events` push receiver.
package tptoken

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/time/rate"

	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the `tptoken` Caddy app: it owns one token engine per component (TP)
// appid, shared by every handler and kept across config reloads.
type App struct {
	// Components are the TPs served; each `tptoken` global option block adds one.
	Components []*Component `json:"components,omitempty"`

	// StorageRaw overrides Caddy's configured storage for tptoken records.
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=caddy.storage inline_key=module"`

	// MetricsPerAppID adds the caddy_tptoken_authorizer_* metrics, labelled by
	// authorizer appid (one series set per authorizer: mind the cardinality).
	MetricsPerAppID bool `json:"metrics_per_appid,omitempty"`

	// MaxReplayMemory bounds the request-body bytes buffered for replays by all
	// requests in flight (the process's, across configs). A body that finds
	// no room is streamed without a replay. Default 64 MiB.
	MaxReplayMemory int64 `json:"max_replay_memory,omitempty"`

	comps   map[string]*component
	order   []string
	storage certmagic.Storage
	logger  *zap.Logger
	ctx     caddy.Context // to find the http app once every app is provisioned (Start)
}

// Component configures one TP (component appid). Secret fields accept {env.*}
// and {file.*} placeholders, resolved at provision so the adapted JSON never
// holds the secret itself.
type Component struct {
	ComponentAppID     string `json:"component_appid"`
	ComponentAppSecret string `json:"component_appsecret"`
	// MessageToken (消息验证 TOKEN) verifies push signatures; needed by tptoken_events.
	MessageToken string `json:"message_token,omitempty"`
	// EncodingAESKey (消息加密解密 KEY, 43 characters) decrypts pushes; needed by tptoken_events.
	EncodingAESKey string `json:"encoding_aes_key,omitempty"`
	// API is the token family: v1 (default) or v2. v1 and v2 tokens are never mixed.
	API string `json:"api,omitempty"`
	// Endpoint is the platform base URL; default https://open.microapp.bytedance.com (v1)
	// or https://open.douyin.com (v2).
	Endpoint string `json:"endpoint,omitempty"`
	// RefreshAhead: access tokens are refreshed this long before they expire. Default 10m.
	RefreshAhead caddy.Duration `json:"refresh_ahead,omitempty"`
	// RefreshTokenMargin: refresh tokens are renewed this long before they
	// expire, even for idle authorizers. Default 72h.
	RefreshTokenMargin caddy.Duration `json:"refresh_token_margin,omitempty"`
	// EncryptionKey seals records at rest with AES-256-GCM (32 bytes: raw, hex or base64).
	EncryptionKey string `json:"encryption_key,omitempty"`
	// PreviousEncryptionKeys are earlier encryption keys: records sealed with
	// them are still read, and sealed with EncryptionKey when next written (or
	// by `caddy tptoken reseal`). For rotating the key.
	PreviousEncryptionKeys []string `json:"previous_encryption_keys,omitempty"`
	// Timeout bounds one platform call. Default 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// LockTimeout bounds the wait for the storage lock. Default 15s.
	LockTimeout caddy.Duration `json:"lock_timeout,omitempty"`
	// SingleInstance allows refreshing with the in-process lock only when the
	// storage lock fails. Set it only when no other instance shares the storage.
	SingleInstance bool `json:"single_instance,omitempty"`
	// MaxConcurrentCalls caps platform calls in flight. Default 16.
	MaxConcurrentCalls int `json:"max_concurrent_calls,omitempty"`
	// RenewRate caps background renewals per second (refresh-ahead, refresh-token
	// renewal): a cluster renewing 100,000 authorizers never bursts. Default 2.
	RenewRate float64 `json:"renew_rate,omitempty"`
	// SweepInterval is how often every record in storage is checked for a refresh
	// token nearing its expiry. Default 10m.
	SweepInterval caddy.Duration `json:"sweep_interval,omitempty"`
	// RedirectExchanges per RedirectWindow bound the code exchanges that
	// authorization redirects (which anyone can send) may start, per instance.
	// Defaults 300 per 1h; -1: redirects never start one.
	RedirectExchanges int            `json:"redirect_exchanges,omitempty"`
	RedirectWindow    caddy.Duration `json:"redirect_window,omitempty"`
	// RedirectCalls caps those exchanges' platform calls in flight, on slots of
	// their own (never one of max_concurrent_calls). Default 4.
	RedirectCalls int `json:"redirect_calls,omitempty"`
	// PushWindow: pushes stamped further than this from the clock are refused. Default 10m.
	PushWindow caddy.Duration `json:"push_window,omitempty"`
}

// component is the runtime side of a Component.
type component struct {
	appID   string
	family  tokensource.Family
	engine  *tokensource.Engine
	pooled  *pooledEngine
	push    *push.Crypto // nil without message_token / encoding_aes_key
	state   *stateSigner // authorization-link states (authstate.go)
	poolKey string
	rawKey  bool // an encryption key was 32 characters taken as bytes (a passphrase)
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "tptoken", New: func() caddy.Module { return new(App) }}
}

// engines keeps engines across config reloads, so a reload neither drops the
// token cache nor starts a second refresher.
var engines = caddy.NewUsagePool()

// pooledEngine is an engine shared by the configs that use it. Its background
// work starts with the first config's Start and ends when the last config lets go.
type pooledEngine struct {
	*tokensource.Engine
	store  *liveStore // the newest config's storage
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

func (p *pooledEngine) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan struct{})
	go func() {
		defer close(p.done)
		p.Run(ctx)
	}()
}

// Destruct ends the background work, then closes the engine (which waits for
// operations in flight: a refresh is never cut off).
func (p *pooledEngine) Destruct() error {
	p.mu.Lock()
	if p.cancel != nil {
		p.cancel()
		<-p.done
	}
	p.mu.Unlock()
	return p.Close()
}

// Provision resolves secrets, checks the configuration and gets (or builds) the
// engines. It makes no network call.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger, a.ctx = ctx.Logger(), ctx
	a.comps = make(map[string]*component)
	if a.StorageRaw != nil {
		mod, err := ctx.LoadModule(a, "StorageRaw")
		if err != nil {
			return fmt.Errorf("loading tptoken storage: %v", err)
		}
		st, err := mod.(caddy.StorageConverter).CertMagicStorage()
		if err != nil {
			return fmt.Errorf("tptoken storage: %v", err)
		}
		a.storage = st
	} else {
		a.storage = ctx.Storage()
	}
	repl := caddy.NewReplacer()
	for i, c := range a.Components {
		rc, err := a.provisionComponent(repl, c)
		if err != nil {
			a.release()
			return configError(a.logger, fmt.Errorf("tptoken component %d (%s): %w", i+1, c.ComponentAppID, err))
		}
		warnRiskySetup(a.logger.With(zap.String("component_appid", rc.appID)), c, rc.rawKey)
		a.comps[rc.appID] = rc
		a.order = append(a.order, rc.appID)
	}
	if err := a.registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		a.release()
		return fmt.Errorf("registering tptoken metrics: %v", err)
	}
	return nil
}

// secretValue resolves placeholders in a secret field. The error names the field,
// never the value.
func secretValue(repl *caddy.Replacer, field, raw string, required bool) (string, error) {
	if raw == "" {
		if required {
			return "", fmt.Errorf("%s is required", field)
		}
		return "", nil
	}
	v, err := repl.ReplaceOrErr(raw, true, true)
	if err != nil {
		return "", fmt.Errorf("%s: a placeholder in it did not resolve (is the environment variable or file there?)", field)
	}
	return strings.TrimSpace(v), nil
}

func (a *App) provisionComponent(repl *caddy.Replacer, c *Component) (*component, error) {
	appID, err := secretValue(repl, "component_appid", c.ComponentAppID, true)
	if err != nil {
		return nil, err
	}
	if !tokensource.ValidAppID(appID) {
		return nil, fmt.Errorf("component_appid %q: want 1-64 letters, digits, '_' or '-'", appID)
	}
	if _, dup := a.comps[appID]; dup {
		return nil, fmt.Errorf("component_appid %s is configured twice", appID)
	}
	secret, err := secretValue(repl, "component_appsecret", c.ComponentAppSecret, true)
	if err != nil {
		return nil, err
	}
	family, err := tokensource.ParseFamily(c.API)
	if err != nil {
		return nil, err
	}
	msgToken, err := secretValue(repl, "message_token", c.MessageToken, false)
	if err != nil {
		return nil, err
	}
	aesKey, err := secretValue(repl, "encoding_aes_key", c.EncodingAESKey, false)
	if err != nil {
		return nil, err
	}
	encKeyRaw, err := secretValue(repl, "encryption_key", c.EncryptionKey, false)
	if err != nil {
		return nil, err
	}
	var encKey []byte
	if encKeyRaw != "" {
		if encKey, err = tokensource.ParseEncryptionKey(encKeyRaw); err != nil {
			return nil, err
		}
	}
	rawKey := len(encKeyRaw) == 32
	var prevKeys [][]byte
	for i, raw := range c.PreviousEncryptionKeys {
		v, err := secretValue(repl, fmt.Sprintf("previous_encryption_keys[%d]", i), raw, true)
		if err != nil {
			return nil, err
		}
		k, err := tokensource.ParseEncryptionKey(v)
		if err != nil {
			return nil, fmt.Errorf("previous_encryption_keys[%d]: %v", i, err)
		}
		prevKeys = append(prevKeys, k)
		rawKey = rawKey || len(v) == 32
		encKeyRaw += "\x00" + v // the pool key covers them
	}
	if len(prevKeys) > 0 && encKey == nil {
		return nil, errors.New("previous_encryption_keys needs encryption_key, the key records are sealed with now")
	}
	rc := &component{appID: appID, family: family, rawKey: rawKey, state: newStateSigner(secret, appID)}
	if msgToken != "" || aesKey != "" {
		if msgToken == "" || aesKey == "" {
			return nil, errors.New("message_token and encoding_aes_key go together: set both to receive pushes")
		}
		if rc.push, err = push.NewCrypto(msgToken, aesKey, appID); err != nil {
			return nil, err
		}
	}
	// The pool key covers everything the engine is built from, so a changed
	// config gets a new engine while an unchanged one keeps its cache.
	h := sha256.New()
	for _, s := range []string{appID, secret, string(family), c.Endpoint, encKeyRaw, storageIdentity(a.storage),
		time.Duration(c.RefreshAhead).String(), time.Duration(c.RefreshTokenMargin).String(), time.Duration(c.Timeout).String(), time.Duration(c.LockTimeout).String(),
		fmt.Sprint(c.SingleInstance, c.MaxConcurrentCalls, c.RenewRate), time.Duration(c.SweepInterval).String(),
		fmt.Sprint(c.RedirectExchanges, time.Duration(c.RedirectWindow), c.RedirectCalls, time.Duration(c.PushWindow))} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	rc.poolKey = "tptoken/" + appID + "/" + hex.EncodeToString(h.Sum(nil))
	logger := a.logger.With(zap.String("component_appid", appID), zap.String("api", string(family)))
	val, loaded, err := engines.LoadOrNew(rc.poolKey, func() (caddy.Destructor, error) {
		store := new(liveStore)
		store.add(a.storage)
		e, err := tokensource.New(tokensource.Config{
			ComponentAppID: appID, ComponentSecret: tokensource.Secret(secret), Family: family, Endpoint: c.Endpoint,
			CallTimeout: time.Duration(c.Timeout), Store: store, EncryptionKey: encKey, PreviousEncryptionKeys: prevKeys, Logger: logger,
			Observer:     metricsFor(appID), // process-wide collectors: counts survive reloads
			RefreshAhead: time.Duration(c.RefreshAhead), RefreshTokenMargin: time.Duration(c.RefreshTokenMargin),
			LockTimeout: time.Duration(c.LockTimeout), AllowUnlocked: c.SingleInstance,
			MaxConcurrentCalls: c.MaxConcurrentCalls, RenewRate: c.RenewRate, SweepInterval: time.Duration(c.SweepInterval),
			RedirectExchanges: c.RedirectExchanges, RedirectWindow: time.Duration(c.RedirectWindow),
			RedirectCalls: c.RedirectCalls, PushWindow: time.Duration(c.PushWindow),
		})
		if err != nil {
			return nil, err
		}
		return &pooledEngine{Engine: e, store: store}, nil
	})
	if err != nil {
		if loaded {
			_, _ = engines.Delete(rc.poolKey)
		}
		return nil, err
	}
	rc.pooled = val.(*pooledEngine)
	rc.engine = rc.pooled.Engine
	if loaded {
		rc.pooled.store.add(a.storage) // this config's storage serves from now on
	}
	return rc, nil
}

// storageIdentity names the storage for the pool key (hashed, never logged):
// its type, and its description when it has one. It must not depend on the
// storage object, which is new in every config.
func storageIdentity(s certmagic.Storage) string {
	if st, ok := s.(fmt.Stringer); ok {
		return fmt.Sprintf("%T:%s", s, st.String())
	}
	return fmt.Sprintf("%T", s)
}

// Start refuses a config whose routes would send requests without their
// token (checkRoutes), then starts the engines' background work (once per
// engine, however many configs share it): component token upkeep,
// refresh-ahead and the renewal sweep.
func (a *App) Start() error {
	if err := a.checkRoutes(); err != nil {
		return err
	}
	limit := a.MaxReplayMemory
	if limit <= 0 {
		limit = defaultMaxReplayMemory
	}
	replayMemory.limit.Store(limit) // the newest config's
	for _, id := range a.order {
		a.comps[id].pooled.start()
	}
	return nil
}

// Stop stops nothing: engines are released in Cleanup, after the next config
// (if any) has taken its references.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's references to the engines; the last one closes
// an engine, waiting for its operations in flight.
func (a *App) Cleanup() error {
	a.release()
	return nil
}

func (a *App) release() {
	for _, c := range a.comps {
		c.pooled.store.remove(a.storage)
		if _, err := engines.Delete(c.poolKey); err != nil {
			a.logger.Error("closing a token engine", zap.String("component_appid", c.appID), zap.Error(err))
		}
	}
	a.comps = nil
}

// component returns the named component, or the only one when appid is "".
// appid may be a placeholder ({env.X}), resolved here.
func (a *App) component(appid string) (*component, error) {
	if appid != "" {
		v, err := secretValue(caddy.NewReplacer(), "component", appid, true)
		if err != nil {
			return nil, err
		}
		appid = v
	}
	if appid == "" {
		switch len(a.order) {
		case 0:
			return nil, errors.New("the tptoken app has no component: add a `tptoken { component_appid ... }` global option")
		case 1:
			return a.comps[a.order[0]], nil
		default:
			return nil, fmt.Errorf("several components are configured (%s): name one with `component <appid>`", strings.Join(a.order, ", "))
		}
	}
	c, ok := a.comps[appid]
	if !ok {
		return nil, fmt.Errorf("component %s is not configured in the tptoken app", appid)
	}
	return c, nil
}

// appFrom gets the configured tptoken app for a handler.
func appFrom(ctx caddy.Context) (*App, error) {
	v, err := ctx.AppIfConfigured("tptoken")
	if err != nil {
		if errors.Is(err, caddy.ErrNotConfigured) {
			return nil, errors.New("the tptoken app is not configured: add a `tptoken { ... }` global option (or apps.tptoken in JSON)")
		}
		return nil, err
	}
	return v.(*App), nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler is the `tptoken` HTTP handler. It resolves the authorizer appid of a
// request, gets its token (failing early, in the family's error envelope, when
// there is none) and hands the token to the `tptoken` reverse_proxy transport,
// which puts it on the outgoing request only, so no log ever sees it.
type Handler struct {
	// Component selects the TP when the app has several; "" means the only one.
	Component string `json:"component,omitempty"`
	// AppID says where the authorizer appid comes from. Default: header X-Authorizer-Appid.
	AppID *AppIDSource `json:"appid,omitempty"`
	// Token is the kind of token injected: authorizer (default) or component.
	Token string `json:"token,omitempty"`
	// Allow, when set, lists the only authorizer appids served.
	Allow []string `json:"allow,omitempty"`
	// MaxReplayBody bounds the request body buffered to replay a request once
	// after the platform rejected its token. Default 1 MiB; -1 disables replay.
	MaxReplayBody int64 `json:"max_replay_body,omitempty"`
	// ErrorResponse: envelope (default) answers failures in the family's JSON
	// envelope; handle_errors returns them to Caddy for handle_errors routes.
	ErrorResponse string `json:"error_response,omitempty"`

	comp        *component
	allow       map[string]struct{}
	component   bool   // inject the component token
	takeCarrier bool   // read (and remove) the appid carrier
	headerKey   string // canonical form of the appid header
	logger      *zap.Logger
	noTransport *rate.Sometimes // bounds the log lines about a missing transport
}

// AppIDSource is where the appid comes from.
type AppIDSource struct {
	// From: header, query, path or placeholder.
	From string `json:"from"`
	// Name: the header or query parameter name, or the placeholder (for example
	// {http.request.uri.query.appid}). Unused for path.
	Name string `json:"name,omitempty"`
}

const (
	defaultAppIDHeader   = "X-Authorizer-Appid"
	defaultMaxReplayBody = 1 << 20
)

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.tptoken", New: func() caddy.Module { return new(Handler) }}
}

// Provision finds the component and checks the configuration. An error is
// also logged as a short first line (configError).
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	return configError(h.logger, h.provision(ctx))
}

func (h *Handler) provision(ctx caddy.Context) error {
	h.noTransport = &rate.Sometimes{First: 1, Interval: time.Minute}
	h.component = h.Token == "component"
	// A component token needs no appid: its carrier is read only when configured.
	h.takeCarrier = !h.component || h.AppID != nil
	if h.AppID == nil {
		h.AppID = &AppIDSource{From: "header", Name: defaultAppIDHeader}
	}
	switch h.AppID.From {
	case "header", "query", "placeholder":
		if h.AppID.Name == "" {
			return fmt.Errorf("appid %s needs a name", h.AppID.From)
		}
		h.headerKey = http.CanonicalHeaderKey(h.AppID.Name)
	case "path":
	default:
		return fmt.Errorf("appid from %q: use header, query, path or placeholder", h.AppID.From)
	}
	switch h.Token {
	case "", "authorizer", "component":
	default:
		return fmt.Errorf("token %q: use authorizer or component", h.Token)
	}
	switch h.ErrorResponse {
	case "", "envelope", "handle_errors":
	default:
		return fmt.Errorf("error_response %q: use envelope or handle_errors", h.ErrorResponse)
	}
	if h.MaxReplayBody == 0 {
		h.MaxReplayBody = defaultMaxReplayBody
	}
	if len(h.Allow) > 0 && h.component {
		return errors.New("allow lists authorizer appids: it has no effect with token component; remove it")
	}
	if len(h.Allow) > 0 {
		h.allow = make(map[string]struct{}, len(h.Allow))
		for _, a := range h.Allow {
			if !tokensource.ValidAppID(a) {
				return fmt.Errorf("allow: %q is not a valid appid", a)
			}
			h.allow[a] = struct{}{}
		}
	}
	app, err := appFrom(ctx)
	if err != nil {
		return err
	}
	h.comp, err = app.component(h.Component)
	return err
}

// ServeHTTP resolves the appid and token, then calls the next handler with the
// token in the request context for the transport.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	inj := &injection{comp: h.comp, component: h.component, maxReplayBody: h.MaxReplayBody}

	if repl != nil {
		repl.Set("http.tptoken.replayed", false) // the transport sets true when it replays
	}
	if h.takeCarrier {
		inj.appid = h.takeAppID(r, repl)
		if repl != nil {
			repl.Set("http.tptoken.appid", inj.appid)
		}
	}
	var err error
	if h.component {
		inj.tok, err = h.comp.engine.ComponentToken(r.Context())
	} else {
		switch {
		case inj.appid == "":
			return h.fail(w, r, repl, &tokensource.Error{Kind: tokensource.KindBadAppID,
				Msg: "no authorizer appid in the request: send it " + h.carrierHint()})
		case !tokensource.ValidAppID(inj.appid):
			return h.fail(w, r, repl, tokensource.CheckAppID(inj.appid))
		}
		if h.allow != nil {
			if _, ok := h.allow[inj.appid]; !ok {
				return h.fail(w, r, repl, errNotAllowed(inj.appid))
			}
		}
		inj.tok, err = h.comp.engine.Token(r.Context(), inj.appid)
	}
	if err != nil {
		return h.fail(w, r, repl, err)
	}
	if c := h.logger.Check(zapcore.DebugLevel, "token resolved"); c != nil {
		c.Write(zap.String("appid", inj.appid), zap.Uint64("generation", inj.tok.Generation), zap.Time("expiry", inj.tok.Expiry))
	}
	// The guard makes any transport but tptoken's refuse to send the request
	// (routecheck.go): a request never leaves without its token. inj is the
	// ResponseWriter of the rest of the route: it cleans the token from
	// informational answers (transport.go). The request ends when next returns:
	// what its body held of the replay memory is given back.
	r.Header[guardHeader] = guardValue
	inj.ResponseWriter = w
	err = next.ServeHTTP(inj, attach(r, inj))
	delete(r.Header, guardHeader)
	inj.release()
	if !inj.used.Load() {
		return h.notInjected(w, r, repl, err)
	}
	return err
}

// notInjected handles a request whose token no tptoken transport took. If a
// transport refused it because of the guard, nothing was sent: the client
// gets 502 no_transport and the refusal is counted. Either way the route is
// logged, at most once a minute.
func (h *Handler) notInjected(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, err error) error {
	refused := err != nil && strings.Contains(err.Error(), guardHeader)
	h.noTransport.Do(func() {
		h.logger.Error("the token was not injected: no `transport tptoken` handled this request; add it to the reverse_proxy after "+
			"the tptoken handler (reverse_proxy ... { transport tptoken }). Requests that reached another transport were refused, not sent",
			zap.String("host", r.Host), zap.String("path", r.URL.Path), zap.Bool("refused", refused))
	})
	if !refused {
		return err
	}
	metricsFor(h.comp.appID).notInjected.Inc()
	return h.fail(w, r, repl, errNoTransport{})
}

// errNoTransport: the request reached a reverse_proxy without `transport
// tptoken`, which refused to send it (the guard).
type errNoTransport struct{}

func (errNoTransport) Error() string {
	return "the request was not sent: the reverse_proxy of this route lacks `transport tptoken`, so it would have left without its token; " +
		"the Caddy configuration must be fixed (reverse_proxy ... { transport tptoken })"
}

// takeAppID reads the appid from its carrier and removes the carrier (header,
// query parameter or first path segment) from the request.
func (h *Handler) takeAppID(r *http.Request, repl *caddy.Replacer) string {
	switch h.AppID.From {
	case "header":
		vs := r.Header[h.headerKey]
		if len(vs) == 0 {
			return ""
		}
		delete(r.Header, h.headerKey)
		return strings.TrimSpace(vs[0])
	case "query":
		v, rest, found := takeQueryParam(r.URL.RawQuery, h.AppID.Name)
		if found {
			r.URL.RawQuery = rest
			r.RequestURI = r.URL.RequestURI()
		}
		return v
	case "path":
		v, ok := stripFirstSegment(r.URL)
		if ok {
			r.RequestURI = r.URL.RequestURI()
		}
		return v
	default: // placeholder
		if repl == nil {
			return ""
		}
		return repl.ReplaceAll(h.AppID.Name, "")
	}
}

func (h *Handler) carrierHint() string {
	switch h.AppID.From {
	case "header":
		return "in the " + h.AppID.Name + " header"
	case "query":
		return "in the " + h.AppID.Name + " query parameter"
	case "path":
		return "as the first path segment (/<appid>/openapi/...)"
	}
	return "where " + h.AppID.Name + " finds it"
}

// errNotAllowed answers an appid outside the allow list.
type errNotAllowed string

func (e errNotAllowed) Error() string {
	return "authorizer " + string(e) + ": not in this route's allow list"
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
