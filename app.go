package tptoken

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

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

	// AppCredentials are apps whose own tokens tptoken keeps (app_credentials.go);
	// each `app` block of a tptoken global option adds one.
	AppCredentials []*AppCredential `json:"app_credentials,omitempty"`

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
	target  *storageTarget // the storage as check-storage sees it (storagecheck.go)
	logger  *zap.Logger
	ctx     caddy.Context // to find the http app once every app is provisioned (Start)
	loops   *loopCheck    // the start-up check of upstreams resolving to this Caddy (loop.go)

	apps     map[appTokenKey]*appToken // apps' own tokens (app_credentials.go)
	appOrder []appTokenKey
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
	// RebuildOnEmpty: when storage holds no marker of a finished rebuild (a
	// new deployment, storage lost), one instance rebuilds every authorizer
	// without a usable record from the platform's authorized-app list, once
	// per cluster, at renew_rate (docs/reliability.md, "Disaster recovery").
	RebuildOnEmpty bool `json:"rebuild_on_empty,omitempty"`
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
	background
	store *liveStore // the newest config's storage
}

// Destruct ends the background work, then closes the engine (which waits for
// operations in flight: a refresh is never cut off).
func (p *pooledEngine) Destruct() error {
	p.stop()
	return p.Close()
}

// background runs a pooled object's Run once, however many configs start it,
// until stop.
type background struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

func (b *background) start(run func(context.Context)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel, b.done = cancel, make(chan struct{})
	go func() {
		defer close(b.done)
		run(ctx)
	}()
}

func (b *background) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cancel != nil {
		b.cancel()
		<-b.done
	}
}

// Provision resolves secrets, checks the configuration and gets (or builds) the
// engines. It makes no network call.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger, a.ctx = ctx.Logger(), ctx
	a.comps = make(map[string]*component)
	if a.MaxReplayMemory != 0 {
		if err := checkMaxReplayMemory(a.MaxReplayMemory); err != nil {
			return configError(a.logger, err)
		}
	}
	storageRaw := slices.Clone(a.StorageRaw) // LoadModule zeroes it; check-storage provisions it again
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
	a.target = newStorageTarget(storageRaw, a.storage, a.Components)
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
	if err := a.provisionApps(repl); err != nil {
		a.release()
		return configError(a.logger, err)
	}
	if err := a.registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		a.release()
		return fmt.Errorf("registering tptoken metrics: %v", err)
	}
	return nil
}

// check applies the rules (validate.go) of the options that hold no secret;
// the secrets, and the pairs of them, are checked once resolved
// (provisionComponent). Fields left out (0, "") take their defaults.
func (c *Component) check() error {
	if err := checkRequired(c); err != nil {
		return err
	}
	if _, err := apiFamily(c.API); err != nil {
		return err
	}
	if c.Endpoint != "" {
		if err := checkEndpoint(c.Endpoint); err != nil {
			return err
		}
	}
	for _, d := range []struct {
		option string
		v      caddy.Duration
	}{
		{"refresh_ahead", c.RefreshAhead}, {"refresh_token_margin", c.RefreshTokenMargin}, {"timeout", c.Timeout},
		{"lock_timeout", c.LockTimeout}, {"sweep_interval", c.SweepInterval}, {"redirect_exchanges window", c.RedirectWindow},
		{"push_window", c.PushWindow},
	} {
		if d.v != 0 {
			if err := checkDuration(d.option, d.v); err != nil {
				return err
			}
		}
	}
	for _, n := range []struct {
		option string
		v      int
	}{{"max_concurrent_calls", c.MaxConcurrentCalls}, {"redirect_calls", c.RedirectCalls}} {
		if n.v != 0 {
			if err := checkPositive(n.option, n.v); err != nil {
				return err
			}
		}
	}
	if c.RenewRate != 0 {
		if err := checkRenewRate(c.RenewRate); err != nil {
			return err
		}
	}
	if c.RedirectExchanges != 0 {
		return checkRedirectExchanges(c.RedirectExchanges)
	}
	return nil
}

func (a *App) provisionComponent(repl *caddy.Replacer, c *Component) (*component, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	family, _ := apiFamily(c.API) // checked
	// The secrets, resolved and checked; each is in the pool key (hashed).
	var secrets []string
	resolve := func(option, raw string) (string, error) {
		v, err := secretValue(repl, option, raw)
		secrets = append(secrets, v)
		return v, err
	}
	appID, err := resolve("component_appid", c.ComponentAppID)
	if err != nil {
		return nil, err
	}
	if err := checkAppID("component_appid", appID); err != nil {
		return nil, err
	}
	if _, dup := a.comps[appID]; dup {
		return nil, duplicateComponent(appID)
	}
	secret, err := resolve("component_appsecret", c.ComponentAppSecret)
	if err != nil {
		return nil, err
	}
	msgToken, err := resolve("message_token", c.MessageToken)
	if err != nil {
		return nil, err
	}
	aesKey, err := resolve("encoding_aes_key", c.EncodingAESKey)
	if err != nil {
		return nil, err
	}
	if err := checkPushKeys(msgToken, aesKey); err != nil {
		return nil, err
	}
	if aesKey != "" {
		if err := checkEncodingAESKey(aesKey); err != nil {
			return nil, err
		}
	}
	encKey, prevKeys, rawKey, err := storageKeys(resolve, c.EncryptionKey, c.PreviousEncryptionKeys)
	if err != nil {
		return nil, err
	}
	rc := &component{appID: appID, family: family, rawKey: rawKey, state: newStateSigner(secret, appID)}
	if msgToken != "" {
		if rc.push, err = push.NewCrypto(msgToken, aesKey, appID); err != nil {
			return nil, err
		}
	}
	if rc.poolKey, err = poolKey("tptoken/"+appID, c, a.storage, secrets...); err != nil {
		return nil, err
	}
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
			RedirectCalls: c.RedirectCalls, PushWindow: time.Duration(c.PushWindow), RebuildOnEmpty: c.RebuildOnEmpty,
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

// poolKey names, under prefix, the engine of a component config (or the
// token source of an app's kind): an unchanged config gets the one it had (a
// reload keeps the token cache and the background work), any change a new
// one. It covers the whole config as JSON, so an option added later needs no
// line here; parts, the values its placeholders resolved to (a changed
// {env.*} is a change); and the storage (storageIdentity). Secrets enter it
// only through a SHA-256: the key, which the pool holds, reveals none.
func poolKey(prefix string, cfg any, storage certmagic.Storage, parts ...string) (string, error) {
	b, err := json.Marshal(cfg)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, s := range append([]string{string(b), storageIdentity(storage)}, parts...) {
		fmt.Fprintf(h, "%d:%s;", len(s), s)
	}
	return prefix + "/" + hex.EncodeToString(h.Sum(nil)), nil
}

// storageKeys resolves (through resolve) and reads encryption_key and
// previous_encryption_keys; raw reports a key given as 32 characters taken
// as the key bytes (a passphrase: warnRiskySetup).
func storageKeys(resolve func(option, raw string) (string, error), encryptionKeyRaw string, previous []string) (key []byte, prev [][]byte, raw bool, err error) {
	v, err := resolve("encryption_key", encryptionKeyRaw)
	if err != nil {
		return nil, nil, false, err
	}
	if v != "" {
		if key, err = encryptionKey("encryption_key", v); err != nil {
			return nil, nil, false, err
		}
	}
	if err := checkPreviousKeys(v, previous); err != nil {
		return nil, nil, false, err
	}
	raw = len(v) == 32
	for i, r := range previous {
		option := fmt.Sprintf("previous_encryption_keys[%d]", i)
		pv, err := resolve(option, r)
		if err != nil {
			return nil, nil, false, err
		}
		k, err := encryptionKey(option, pv)
		if err != nil {
			return nil, nil, false, err
		}
		prev = append(prev, k)
		raw = raw || len(pv) == 32
	}
	return key, prev, raw, nil
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
// refresh-ahead and the renewal sweep; and the app tokens' refresh-ahead.
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
		p := a.comps[id].pooled
		p.start(p.Run)
	}
	for _, k := range a.appOrder {
		p := a.apps[k].pooled
		p.start(p.Run)
	}
	a.loops = startLoopCheck(a.ctx, a.logger)
	return nil
}

// Stop ends this config's start-up loop check. Engines are released in
// Cleanup, after the next config (if any) has taken its references.
func (a *App) Stop() error {
	a.loops.stop()
	return nil
}

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
	a.releaseApps()
}

// component returns the named component, or the only one when appid is "".
// appid may be a placeholder ({env.X}), resolved here; option names it in errors.
func (a *App) component(option, appid string) (*component, error) {
	if appid != "" {
		v, err := secretValue(caddy.NewReplacer(), option, appid)
		if err == nil {
			err = checkAppID(option, v)
		}
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
