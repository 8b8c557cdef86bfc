package emulator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("tptoken_emulator", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("tptoken_emulator", httpcaddyfile.Before, "respond")
}

// emulators holds the running emulators, keyed by the TP's identity, so that
// their state (tokens, codes, authorizers) and their ticket pushes survive
// config reloads: the new config's handler takes a reference before the old
// one drops its own.
var emulators = caddy.NewUsagePool()

// Handler is the Caddy module http.handlers.tptoken_emulator: a terminal
// handler that answers every request with the platform emulator (unknown
// paths get a 404 JSON). Secrets accept {env.*} and {file.*} placeholders,
// resolved at provision time.
type Handler struct {
	ComponentAppID     string `json:"component_appid,omitempty"`
	ComponentAppSecret string `json:"component_appsecret,omitempty"`
	MessageToken       string `json:"message_token,omitempty"`
	EncodingAESKey     string `json:"encoding_aes_key,omitempty"`
	// PushURL is where tickets and authorization events are pushed (the
	// tptoken_events site); empty: no pushes.
	PushURL           string         `json:"push_url,omitempty"`
	TicketInterval    caddy.Duration `json:"ticket_interval,omitempty"`
	AccessTokenTTL    caddy.Duration `json:"access_token_ttl,omitempty"`
	RefreshTokenTTL   caddy.Duration `json:"refresh_token_ttl,omitempty"`
	ComponentTokenTTL caddy.Duration `json:"component_token_ttl,omitempty"`
	CodeTTL           caddy.Duration `json:"code_ttl,omitempty"`
	TicketTTL         caddy.Duration `json:"ticket_ttl,omitempty"`
	V1ReissueWindow   caddy.Duration `json:"v1_reissue_window,omitempty"`
	V2Grace           caddy.Duration `json:"v2_grace,omitempty"`
	Seed              int64          `json:"seed,omitempty"`
	// Authorize lists authorizer appids authorized at start; their AUTHORIZED
	// pushes follow the first successful ticket push.
	Authorize []string `json:"authorize,omitempty"`
	// Apps are apps whose own tokens (app_access_token, client_token) are
	// issued; secrets accept placeholders.
	Apps            []AppCred      `json:"apps,omitempty"`
	AppTokenTTL     caddy.Duration `json:"app_token_ttl,omitempty"`
	AppGrace        caddy.Duration `json:"app_grace,omitempty"`
	ClientTokenRate int            `json:"client_token_rate,omitempty"`

	emu *Emulator
	key string
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.tptoken_emulator",
		New: func() caddy.Module { return new(Handler) },
	}
}

// pooled is one running emulator and its ticket-push loop.
type pooled struct {
	emu    *Emulator
	cancel context.CancelFunc
	done   chan struct{}
}

// Destruct ends the ticket loop and the emulator's background pushes.
func (p *pooled) Destruct() error {
	p.cancel()
	<-p.done
	return p.emu.Close()
}

// config resolves placeholders and builds the emulator configuration.
func (h *Handler) config(ctx caddy.Context) Config {
	repl := caddy.NewReplacer()
	apps := make([]AppCred, len(h.Apps))
	for i, a := range h.Apps {
		apps[i] = AppCred{AppID: repl.ReplaceAll(a.AppID, ""), Secret: repl.ReplaceAll(a.Secret, "")}
	}
	return Config{
		Apps:               apps,
		AppTokenTTL:        time.Duration(h.AppTokenTTL),
		AppGrace:           time.Duration(h.AppGrace),
		ClientTokenRate:    h.ClientTokenRate,
		ComponentAppID:     repl.ReplaceAll(h.ComponentAppID, ""),
		ComponentAppSecret: repl.ReplaceAll(h.ComponentAppSecret, ""),
		MessageToken:       repl.ReplaceAll(h.MessageToken, ""),
		EncodingAESKey:     repl.ReplaceAll(h.EncodingAESKey, ""),
		PushURL:            repl.ReplaceAll(h.PushURL, ""),
		TicketInterval:     time.Duration(h.TicketInterval),
		AccessTokenTTL:     time.Duration(h.AccessTokenTTL),
		RefreshTokenTTL:    time.Duration(h.RefreshTokenTTL),
		ComponentTokenTTL:  time.Duration(h.ComponentTokenTTL),
		CodeTTL:            time.Duration(h.CodeTTL),
		TicketTTL:          time.Duration(h.TicketTTL),
		V1ReissueWindow:    time.Duration(h.V1ReissueWindow),
		V2Grace:            time.Duration(h.V2Grace),
		Seed:               h.Seed,
		Logger:             ctx.Logger(),
		Authorize:          h.Authorize,
	}
}

// poolKey identifies the emulated platform: the TP's credentials and the seed.
// Lifetimes, push URL and interval may change across reloads without losing state.
func poolKey(c Config) string {
	b, _ := json.Marshal([]any{c.ComponentAppID, c.ComponentAppSecret, c.MessageToken, c.EncodingAESKey, c.Seed})
	sum := sha256.Sum256(b)
	return "tptoken_emulator/" + c.ComponentAppID + "/" + hex.EncodeToString(sum[:8])
}

// Provision resolves the secrets and takes (or creates) the pooled emulator.
// A new emulator starts its ticket-push loop, which ends when the last config
// using it is cleaned up.
func (h *Handler) Provision(ctx caddy.Context) error {
	cfg := h.config(ctx)
	if cfg.ComponentAppID == "" || cfg.ComponentAppSecret == "" {
		return errors.New("tptoken_emulator: component_appid and component_appsecret are required (empty after resolving placeholders?)")
	}
	key := poolKey(cfg)
	v, loaded, err := emulators.LoadOrNew(key, func() (caddy.Destructor, error) {
		emu, err := New(cfg)
		if err != nil {
			return nil, err
		}
		runCtx, cancel := context.WithCancel(context.Background())
		p := &pooled{emu: emu, cancel: cancel, done: make(chan struct{})}
		go func() {
			defer close(p.done)
			emu.Run(runCtx)
		}()
		return p, nil
	})
	if err != nil {
		return fmt.Errorf("tptoken_emulator: %w", err)
	}
	p := v.(*pooled)
	if loaded {
		// The newest config sets what may change without losing state.
		if err := p.emu.SetPushURL(cfg.PushURL); err != nil {
			_, _ = emulators.Delete(key)
			return fmt.Errorf("tptoken_emulator: %w", err)
		}
		p.emu.SetLifetimes(Lifetimes{
			AccessTokenTTL: cfg.AccessTokenTTL, RefreshTokenTTL: cfg.RefreshTokenTTL, ComponentTokenTTL: cfg.ComponentTokenTTL,
			CodeTTL: cfg.CodeTTL, TicketTTL: cfg.TicketTTL, V1ReissueWindow: cfg.V1ReissueWindow, V2Grace: cfg.V2Grace,
			AppTokenTTL: cfg.AppTokenTTL, AppGrace: cfg.AppGrace,
		})
		p.emu.SetTicketInterval(cfg.TicketInterval)
		p.emu.ensureAuthorized(cfg.Authorize)
		for _, a := range cfg.Apps {
			if err := p.emu.AddApp(a.AppID, a.Secret); err != nil {
				_, _ = emulators.Delete(key)
				return fmt.Errorf("tptoken_emulator: %w", err)
			}
		}
	}
	h.emu, h.key = p.emu, key
	return nil
}

// ServeHTTP answers with the emulator; it never calls next.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	h.emu.ServeHTTP(w, r)
	return nil
}

// Cleanup drops this config's reference to the pooled emulator; the last one
// stops it.
func (h *Handler) Cleanup() error {
	if h.key == "" {
		return nil
	}
	_, err := emulators.Delete(h.key)
	return err
}

// ensureAuthorized authorizes the appids not known yet (a reloaded Caddy
// config may list new ones) and queues their AUTHORIZED pushes for Run's next
// successful ticket push.
func (e *Emulator) ensureAuthorized(appids []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	for _, a := range appids {
		if e.auths[a] == nil {
			e.authorizeLocked(a, now)
			e.startAuthorize = append(e.startAuthorize, a)
		}
	}
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	tptoken_emulator [<matcher>] {
//		component_appid     <appid>
//		component_appsecret <secret>
//		message_token       <token>
//		encoding_aes_key    <43 characters>
//		push_url            <url of the tptoken_events site>
//		ticket_interval     <duration>   # default 10m
//		access_token_ttl    <duration>   # default 2h
//		refresh_token_ttl   <duration>   # default 720h (30 days)
//		component_token_ttl <duration>   # default 2h
//		code_ttl            <duration>   # default 1h
//		ticket_ttl          <duration>   # default 3h
//		v1_reissue_window   <duration>   # default 30m
//		v2_grace            <duration>   # default 5m
//		seed                <integer>
//		authorize           <appid...>
//		app                 <appid> <secret>  # may repeat: an app whose own tokens are issued
//		app_token_ttl       <duration>   # default 2h
//		app_grace           <duration>   # default 5m: a fetch cuts the previous app token to this
//		client_token_rate   <n>|off      # client_token fetches per client_key in 5 minutes; default 500
//	}
//
// component_appid and component_appsecret are required; secrets may be
// {env.*} / {file.*} placeholders. Each subdirective may appear once.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return d.Errf("duplicate subdirective %s", name)
		}
		seen[name] = name != "app"
		if str := h.stringField(name); str != nil {
			if !d.NextArg() {
				return d.Errf("%s: expected one value", name)
			}
			*str = d.Val()
			if d.NextArg() {
				return d.Errf("%s: expected one value", name)
			}
			continue
		}
		if dur := h.durationField(name); dur != nil {
			var s string
			if !d.Args(&s) || d.NextArg() {
				return d.Errf("%s: expected one duration", name)
			}
			v, err := caddy.ParseDuration(s)
			if err != nil || v <= 0 {
				return d.Errf("%s: %q is not a positive duration", name, s)
			}
			*dur = caddy.Duration(v)
			continue
		}
		switch name {
		case "seed":
			var s string
			if !d.Args(&s) || d.NextArg() {
				return d.Errf("seed: expected one integer")
			}
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return d.Errf("seed: %q is not an integer", s)
			}
			h.Seed = v
		case "authorize":
			ids := d.RemainingArgs()
			if len(ids) == 0 {
				return d.Errf("authorize: expected at least one appid")
			}
			for _, id := range ids {
				if !tokensource.ValidAppID(id) {
					return d.Errf("authorize: invalid appid %q", id)
				}
			}
			h.Authorize = ids
		case "app":
			var id, secret string
			if !d.Args(&id, &secret) || d.NextArg() {
				return d.Errf("app: expected <appid> <secret>")
			}
			if !strings.Contains(id, "{") && !tokensource.ValidAppID(id) {
				return d.Errf("app: invalid appid %q", id)
			}
			h.Apps = append(h.Apps, AppCred{AppID: id, Secret: secret})
		case "client_token_rate":
			var s string
			if !d.Args(&s) || d.NextArg() {
				return d.Errf("client_token_rate: expected a positive integer or off")
			}
			if s == "off" {
				h.ClientTokenRate = -1
				break
			}
			v, err := strconv.Atoi(s)
			if err != nil || v <= 0 {
				return d.Errf("client_token_rate: %q is not a positive integer (or off)", s)
			}
			h.ClientTokenRate = v
		default:
			return d.Errf("unknown subdirective %s", name)
		}
	}
	if h.ComponentAppID == "" || h.ComponentAppSecret == "" {
		return d.Err("tptoken_emulator: component_appid and component_appsecret are required")
	}
	if !strings.Contains(h.ComponentAppID, "{") && !tokensource.ValidAppID(h.ComponentAppID) {
		return d.Errf("component_appid: invalid appid %q", h.ComponentAppID)
	}
	return nil
}

func (h *Handler) stringField(name string) *string {
	switch name {
	case "component_appid":
		return &h.ComponentAppID
	case "component_appsecret":
		return &h.ComponentAppSecret
	case "message_token":
		return &h.MessageToken
	case "encoding_aes_key":
		return &h.EncodingAESKey
	case "push_url":
		return &h.PushURL
	}
	return nil
}

func (h *Handler) durationField(name string) *caddy.Duration {
	switch name {
	case "ticket_interval":
		return &h.TicketInterval
	case "access_token_ttl":
		return &h.AccessTokenTTL
	case "refresh_token_ttl":
		return &h.RefreshTokenTTL
	case "component_token_ttl":
		return &h.ComponentTokenTTL
	case "code_ttl":
		return &h.CodeTTL
	case "ticket_ttl":
		return &h.TicketTTL
	case "v1_reissue_window":
		return &h.V1ReissueWindow
	case "v2_grace":
		return &h.V2Grace
	case "app_token_ttl":
		return &h.AppTokenTTL
	case "app_grace":
		return &h.AppGrace
	}
	return nil
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
	_ caddy.Destructor            = (*pooled)(nil)
)
