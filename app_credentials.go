package tptoken

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// App credentials: apps whose own tokens (a mini-app's access_token, an
// app's client_token) tptoken fetches and shares, one `app` block each in a
// tptoken global option (apps.tptoken.app_credentials in JSON). Each (app,
// kind) has one token source per process, kept across config reloads like a
// component's engine, and fetched at most once per generation across the
// instances sharing the storage (tokensource/single.go).

// AppCredential configures one app. Secret fields accept {env.*} and
// {file.*} placeholders, resolved at provision.
type AppCredential struct {
	// AppID is the app's appid (for a client_token, its client_key).
	AppID string `json:"appid"`
	// Secret is its AppSecret (client_secret).
	Secret string `json:"secret"`
	// Tokens are the kinds tptoken keeps for the app: client_token,
	// app_access_token. Naming a kind says nothing else fetches it any more:
	// every other fetch cuts tptoken's token short.
	Tokens []string `json:"tokens"`
	// Endpoints are the token endpoints' base URLs, by kind; defaults
	// https://open.douyin.com (client_token), https://developer.toutiao.com
	// (app_access_token; a mini-game's: https://minigame.zijieapi.com/mgplatform).
	Endpoints map[string]string `json:"endpoints,omitempty"`
	// RefreshAhead: a token is fetched again this long before it expires (at
	// most half its life). Default 10m.
	RefreshAhead caddy.Duration `json:"refresh_ahead,omitempty"`
	// Grace: how long the platform keeps the previous token once a new one is
	// fetched. Default 5m (the platform's rule; shorter only in tests).
	Grace caddy.Duration `json:"grace,omitempty"`
	// EncryptionKey seals the stored tokens with AES-256-GCM;
	// PreviousEncryptionKeys are still read (key rotation).
	EncryptionKey          string   `json:"encryption_key,omitempty"`
	PreviousEncryptionKeys []string `json:"previous_encryption_keys,omitempty"`
	// Timeout bounds one platform call (default 10s); LockTimeout the wait
	// for the storage lock (default 15s).
	Timeout     caddy.Duration `json:"timeout,omitempty"`
	LockTimeout caddy.Duration `json:"lock_timeout,omitempty"`
	// SingleInstance allows a fetch with the in-process lock only when the
	// storage lock fails. Only when no other instance shares the storage.
	SingleInstance bool `json:"single_instance,omitempty"`
}

// appKinds are the kinds of an app's own token, in the order shown.
var appKinds = []string{tokensource.ClientToken, tokensource.AppAccessToken}

func isAppKind(v string) bool { return slices.Contains(appKinds, v) }

// appTokenKey names one app token of the config.
type appTokenKey struct{ appID, kind string }

// appToken is the runtime side of one (app, kind).
type appToken struct {
	appID   string
	kind    string
	grace   time.Duration
	src     tokensource.AppSource
	pooled  *pooledApp
	poolKey string
}

// appSources keeps app token sources across config reloads.
var appSources = caddy.NewUsagePool()

// pooledApp is an app token source shared by the configs that use it.
type pooledApp struct {
	tokensource.AppSource
	background
	store *liveStore
}

// Destruct ends the background work, then closes the source (which waits for
// a fetch in flight).
func (p *pooledApp) Destruct() error {
	p.stop()
	return p.Close()
}

// check applies the rules of the options that hold no secret (validate_apps.go).
func (c *AppCredential) check() error {
	if err := checkAppTokens(c.Tokens); err != nil {
		return err
	}
	for kind, u := range c.Endpoints {
		if err := checkAppEndpoint(kind, u, c.Tokens); err != nil {
			return err
		}
	}
	for _, d := range []struct {
		option string
		v      caddy.Duration
	}{{"refresh_ahead", c.RefreshAhead}, {"grace", c.Grace}, {"timeout", c.Timeout}, {"lock_timeout", c.LockTimeout}} {
		if d.v != 0 {
			if err := checkDuration(d.option, d.v); err != nil {
				return err
			}
		}
	}
	return checkPreviousKeys(c.EncryptionKey, c.PreviousEncryptionKeys)
}

// provisionApps builds (or takes from the pool) the token source of every
// configured (app, kind).
func (a *App) provisionApps(repl *caddy.Replacer) error {
	a.apps = map[appTokenKey]*appToken{}
	for i, c := range a.AppCredentials {
		if err := a.provisionApp(repl, c); err != nil {
			return fmt.Errorf("tptoken app %d (%s): %w", i+1, c.AppID, err)
		}
	}
	return nil
}

func (a *App) provisionApp(repl *caddy.Replacer, c *AppCredential) error {
	if c.AppID == "" || c.Secret == "" {
		return errAppRequired
	}
	if err := c.check(); err != nil {
		return err
	}
	var secrets []string
	resolve := func(option, raw string) (string, error) {
		v, err := secretValue(repl, option, raw)
		secrets = append(secrets, v)
		return v, err
	}
	appID, err := resolve("app", c.AppID)
	if err != nil {
		return err
	}
	if err := checkAppID("app", appID); err != nil {
		return err
	}
	secret, err := resolve("secret", c.Secret)
	if err != nil {
		return err
	}
	if secret == "" {
		return errAppRequired
	}
	encKey, prevKeys, _, err := storageKeys(resolve, c.EncryptionKey, c.PreviousEncryptionKeys)
	if err != nil {
		return err
	}
	warnRiskyApp(a.logger.With(zap.String("app", appID)), c)
	for _, kind := range c.Tokens {
		key := appTokenKey{appID, kind}
		if _, dup := a.apps[key]; dup {
			return duplicateAppToken(appID, kind)
		}
		t := &appToken{appID: appID, kind: kind, grace: time.Duration(c.Grace)}
		if t.grace == 0 {
			t.grace = 5 * time.Minute
		}
		if t.poolKey, err = poolKey("tptoken/@apps/"+appID+"/"+kind, c, a.storage, append([]string{kind}, secrets...)...); err != nil {
			return err
		}
		val, loaded, err := appSources.LoadOrNew(t.poolKey, func() (caddy.Destructor, error) {
			store := new(liveStore)
			store.add(a.storage)
			src, err := tokensource.NewAppSource(tokensource.AppConfig{
				Kind: kind, AppID: appID, Secret: tokensource.Secret(secret), Endpoint: c.Endpoints[kind],
				CallTimeout: time.Duration(c.Timeout), Store: store, EncryptionKey: encKey, PreviousEncryptionKeys: prevKeys,
				Logger:       a.logger.With(zap.String("app", appID), zap.String("token", kind)),
				Observer:     metricsForApp(appID, kind), // process-wide collectors: counts survive reloads
				RefreshAhead: time.Duration(c.RefreshAhead), Grace: time.Duration(c.Grace),
				LockTimeout: time.Duration(c.LockTimeout), AllowUnlocked: c.SingleInstance,
			})
			if err != nil {
				return nil, err
			}
			return &pooledApp{AppSource: src, store: store}, nil
		})
		if err != nil {
			if loaded {
				_, _ = appSources.Delete(t.poolKey)
			}
			return err
		}
		t.pooled = val.(*pooledApp)
		t.src = t.pooled.AppSource
		if loaded {
			t.pooled.store.add(a.storage) // this config's storage serves from now on
		}
		a.apps[key] = t
		a.appOrder = append(a.appOrder, key)
	}
	return nil
}

// releaseApps drops this config's references to the app token sources.
func (a *App) releaseApps() {
	for _, t := range a.apps {
		t.pooled.store.remove(a.storage)
		if _, err := appSources.Delete(t.poolKey); err != nil {
			a.logger.Error("closing an app token source", zap.String("app", t.appID), zap.String("token", t.kind), zap.Error(err))
		}
	}
	a.apps = nil
}

// appTokensOf lists the configured app tokens of kind.
func (a *App) appTokensOf(kind string) []*appToken {
	var out []*appToken
	for _, k := range a.appOrder {
		if k.kind == kind {
			out = append(out, a.apps[k])
		}
	}
	return out
}

// appToken returns the configured (app, kind): the named app (appid may be a
// placeholder, resolved here), or the only app owning kind when appid is "".
func (a *App) appToken(appid, kind string) (*appToken, error) {
	if appid != "" {
		v, err := secretValue(caddy.NewReplacer(), "app", appid)
		if err == nil {
			err = checkAppID("app", v)
		}
		if err != nil {
			return nil, err
		}
		t, ok := a.apps[appTokenKey{v, kind}]
		if !ok {
			return nil, fmt.Errorf("app %s has no %s in the tptoken app: add it to the tokens of its `app %s` block", v, kind, v)
		}
		return t, nil
	}
	ts := a.appTokensOf(kind)
	switch len(ts) {
	case 0:
		return nil, fmt.Errorf("no app of the tptoken app keeps a %s: add `tokens %s` to an `app` block of the tptoken global option", kind, kind)
	case 1:
		return ts[0], nil
	}
	ids := make([]string, len(ts))
	for i, t := range ts {
		ids[i] = t.appID
	}
	return nil, fmt.Errorf("several apps keep a %s (%s): name one with `app <appid>`, or read it from the request with `appid ...`", kind, strings.Join(ids, ", "))
}

// warnRiskyApp warns about an app's secrets written in the configuration,
// and a missing encryption key.
func warnRiskyApp(logger *zap.Logger, c *AppCredential) {
	for option, raws := range map[string][]string{"secret": {c.Secret}, "encryption_key": {c.EncryptionKey},
		"previous_encryption_keys": c.PreviousEncryptionKeys} {
		for _, raw := range raws {
			if raw != "" && !resolvedAtProvision(raw) {
				logger.Warn("a secret is written in the configuration itself: it is in the adapted JSON and the admin API's GET /config/. "+
					"Write it as {env.VAR} or {file./path/to/secret}", zap.String("option", option))
				break
			}
		}
	}
	if c.EncryptionKey == "" {
		logger.Warn("no encryption_key: the app's tokens are stored as plain JSON, usable by anyone who can read the storage",
			zap.String("option", "encryption_key"))
	}
}
