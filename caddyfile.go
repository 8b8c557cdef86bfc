package tptoken

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("tptoken", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("tptoken", parseHandler)
	httpcaddyfile.RegisterDirectiveOrder("tptoken", httpcaddyfile.Before, "reverse_proxy")
	httpcaddyfile.RegisterHandlerDirective("tptoken_events", parseEvents)
	httpcaddyfile.RegisterDirectiveOrder("tptoken_events", httpcaddyfile.Before, "respond")
}

// parseGlobalOption parses the `tptoken` global option. Each block adds one
// component (TP) to the tptoken app:
//
//	tptoken {
//		component_appid      <appid>
//		component_appsecret  <secret>          # {env.X} / {file.X} placeholders are resolved at provision
//		message_token        <token>           # 消息验证 TOKEN: push signatures (tptoken_events)
//		encoding_aes_key     <43 chars>        # 消息加密解密 KEY: push decryption (tptoken_events)
//		api                  v1|v2             # token family; default v1
//		endpoint             <url>             # default https://open.microapp.bytedance.com (v1), https://open.douyin.com (v2)
//		refresh_ahead        <duration>        # default 10m
//		refresh_token_margin <duration>        # default 72h
//		encryption_key       <key>             # optional: AES-256-GCM for records at rest
//		previous_encryption_keys <key>...      # earlier keys, still read (key rotation)
//		timeout              <duration>        # one platform call; default 10s
//		lock_timeout         <duration>        # wait for the storage lock; default 15s
//		max_concurrent_calls <n>               # platform calls in flight; default 16
//		renew_rate           <per second>      # background renewals per second; default 2
//		sweep_interval       <duration>        # how often all records are checked for renewal; default 10m
//		redirect_exchanges   <n>|off [<window>] # exchanges authorization redirects may start; default 300 1h
//		redirect_calls       <n>               # their platform calls in flight (own slots); default 4
//		push_window          <duration>        # pushes stamped further from the clock are refused; default 10m
//		single_instance                        # refresh without the storage lock if storage locking fails
//		storage              <module> { ... }  # storage for tptoken records; default: Caddy's storage
//		metrics_per_appid                      # add metrics labelled by authorizer appid (whole app; opt-in)
//		max_replay_memory    <size>            # request bodies buffered for replays, all requests together (whole app); default 64MiB
//	}
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	app := new(App)
	if existing != nil {
		prev, ok := existing.(httpcaddyfile.App)
		if !ok {
			return nil, d.Errf("unexpected existing tptoken option of type %T", existing)
		}
		if err := json.Unmarshal(prev.Value, app); err != nil {
			return nil, d.Errf("re-reading the previous tptoken block: %v", err)
		}
	}
	c, storage, err := unmarshalComponent(d, app)
	if err != nil {
		return nil, err
	}
	if storage != nil {
		app.StorageRaw = storage
	}
	app.Components = append(app.Components, c)
	return httpcaddyfile.App{Name: "tptoken", Value: caddyconfig.JSON(app, nil)}, nil
}

// unmarshalComponent parses one block. prev holds the components and storage of
// the blocks before it: a repeated component_appid or a different storage is an
// error on the line that sets it.
func unmarshalComponent(d *caddyfile.Dispenser, prev *App) (*Component, json.RawMessage, error) {
	c := new(Component)
	var storage json.RawMessage
	d.Next() // the option name
	if d.NextArg() {
		return nil, nil, d.Errf("tptoken: the global option takes no arguments (got %q); put its options in a block", d.Val())
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return nil, nil, d.Errf("tptoken: %s is set twice", name)
		}
		seen[name] = true
		var err error
		switch name {
		case "component_appid":
			err = oneArg(d, &c.ComponentAppID)
			if err == nil && !isPlaceholder(c.ComponentAppID) && !tokensource.ValidAppID(c.ComponentAppID) {
				err = d.Errf("component_appid %q: want 1-64 letters, digits, '_' or '-'", c.ComponentAppID)
			}
			for _, o := range prev.Components {
				if err == nil && o.ComponentAppID == c.ComponentAppID {
					err = d.Errf("tptoken: component_appid %s is configured in two blocks", c.ComponentAppID)
				}
			}
		case "component_appsecret":
			err = oneArg(d, &c.ComponentAppSecret)
		case "message_token":
			err = oneArg(d, &c.MessageToken)
		case "encoding_aes_key":
			err = oneArg(d, &c.EncodingAESKey)
			if err == nil && !isPlaceholder(c.EncodingAESKey) && len(c.EncodingAESKey) != 43 {
				err = d.Errf("encoding_aes_key must be 43 characters (the console's 消息加密解密 KEY), got %d", len(c.EncodingAESKey))
			}
		case "api":
			err = oneArg(d, &c.API)
			if err == nil {
				if _, ferr := tokensource.ParseFamily(c.API); ferr != nil {
					err = d.Errf("api %q: use v1 or v2", c.API)
				}
			}
		case "endpoint":
			err = oneArg(d, &c.Endpoint)
			if err == nil && !strings.HasPrefix(c.Endpoint, "http://") && !strings.HasPrefix(c.Endpoint, "https://") {
				err = d.Errf("endpoint %q: want an absolute http(s) URL", c.Endpoint)
			}
		case "refresh_ahead":
			err = durationArg(d, &c.RefreshAhead)
		case "refresh_token_margin":
			err = durationArg(d, &c.RefreshTokenMargin)
		case "encryption_key":
			err = oneArg(d, &c.EncryptionKey)
			if err == nil && !isPlaceholder(c.EncryptionKey) {
				if _, kerr := tokensource.ParseEncryptionKey(c.EncryptionKey); kerr != nil {
					err = d.Errf("%v", kerr)
				}
			}
		case "previous_encryption_keys":
			c.PreviousEncryptionKeys = d.RemainingArgs()
			if len(c.PreviousEncryptionKeys) == 0 {
				err = d.Errf("previous_encryption_keys: want one or more keys (for example {env.TP_STORAGE_KEY_OLD})")
			}
			for _, k := range c.PreviousEncryptionKeys {
				if err == nil && !isPlaceholder(k) {
					if _, kerr := tokensource.ParseEncryptionKey(k); kerr != nil {
						err = d.Errf("previous_encryption_keys: %v", kerr)
					}
				}
			}
		case "timeout":
			err = durationArg(d, &c.Timeout)
		case "lock_timeout":
			err = durationArg(d, &c.LockTimeout)
		case "max_concurrent_calls":
			err = positiveIntArg(d, &c.MaxConcurrentCalls)
		case "renew_rate":
			var v string
			if err = oneArg(d, &v); err == nil {
				r, perr := strconv.ParseFloat(v, 64)
				if perr != nil || r <= 0 {
					err = d.Errf("renew_rate %q: want a positive number of renewals per second, such as 2 or 0.5", v)
				}
				c.RenewRate = r
			}
		case "sweep_interval":
			err = durationArg(d, &c.SweepInterval)
		case "redirect_exchanges":
			err = redirectExchangesArgs(d, c)
		case "redirect_calls":
			err = positiveIntArg(d, &c.RedirectCalls)
		case "push_window":
			err = durationArg(d, &c.PushWindow)
		case "single_instance":
			if d.NextArg() {
				err = d.Errf("single_instance takes no arguments (got %q)", d.Val())
			}
			c.SingleInstance = true
		case "metrics_per_appid":
			if d.NextArg() {
				err = d.Errf("metrics_per_appid takes no arguments (got %q)", d.Val())
			}
			prev.MetricsPerAppID = true
		case "max_replay_memory":
			var v string
			if err = oneArg(d, &v); err == nil {
				n, perr := humanize.ParseBytes(v)
				switch {
				case perr != nil || n == 0 || n > 1<<62:
					err = d.Errf("max_replay_memory %q: want a size such as 64MiB", v)
				case prev.MaxReplayMemory != 0 && prev.MaxReplayMemory != int64(n):
					err = d.Errf("max_replay_memory is app-wide: an earlier tptoken block set it to %d bytes", prev.MaxReplayMemory)
				}
				prev.MaxReplayMemory = int64(n)
			}
		case "storage":
			if !d.NextArg() {
				return nil, nil, d.Errf("storage: want a storage module name, such as file_system")
			}
			// The name is read before UnmarshalModule, which moves d past the module's segment.
			modName, line := d.Val(), d.Line()
			modID := "caddy.storage." + modName
			unm, uerr := caddyfile.UnmarshalModule(d, modID)
			if uerr != nil {
				return nil, nil, uerr
			}
			st, ok := unm.(caddy.StorageConverter)
			if !ok {
				return nil, nil, d.Errf("storage: module %s is not a storage module", modID)
			}
			storage = caddyconfig.JSONModuleObject(st, "module", modName, nil)
			if prev.StorageRaw != nil && string(prev.StorageRaw) != string(storage) {
				return nil, nil, fmt.Errorf("tptoken: storage differs from the one an earlier tptoken block set; tptoken records use one storage, at %s:%d", d.File(), line)
			}
		default:
			return nil, nil, d.Errf("tptoken: unknown option %q", name)
		}
		if err != nil {
			return nil, nil, err
		}
	}
	if c.ComponentAppID == "" {
		return nil, nil, d.Err("tptoken: component_appid is required")
	}
	if c.ComponentAppSecret == "" {
		return nil, nil, d.Err("tptoken: component_appsecret is required (for example {env.TP_COMPONENT_APPSECRET})")
	}
	if len(c.PreviousEncryptionKeys) > 0 && c.EncryptionKey == "" {
		return nil, nil, d.Err("tptoken: previous_encryption_keys needs encryption_key, the key records are sealed with now")
	}
	return c, storage, nil
}

// redirectExchangesArgs reads `redirect_exchanges <n>|off [<window>]`.
func redirectExchangesArgs(d *caddyfile.Dispenser, c *Component) error {
	args := d.RemainingArgs()
	if len(args) == 1 && args[0] == "off" {
		c.RedirectExchanges = -1
		return nil
	}
	if len(args) < 1 || len(args) > 2 {
		return d.Errf("redirect_exchanges: want <n> [<window>] (such as 300 1h) or off, got %d arguments", len(args))
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 1 {
		return d.Errf("redirect_exchanges %q: want a positive number of exchanges per window, or off", args[0])
	}
	c.RedirectExchanges = n
	if len(args) == 2 {
		w, err := caddy.ParseDuration(args[1])
		if err != nil || w <= 0 {
			return d.Errf("redirect_exchanges window %q: want a positive duration such as 1h", args[1])
		}
		c.RedirectWindow = caddy.Duration(w)
	}
	return nil
}

// parseHandler parses the `tptoken` handler directive:
//
//	tptoken [<matcher>] {
//		appid header <name>       # default: header X-Authorizer-Appid
//		appid query <name>        # or: take it from a query parameter
//		appid path                # or: the first path segment (/<appid>/openapi/...), stripped
//		appid <placeholder>       # or: any placeholder; nothing is removed
//		token authorizer|component  # default authorizer; component for TP-level APIs
//		allow <appid...>          # optional allow list; may repeat
//		component <appid>         # which TP, when the app has several
//		max_replay_body <size>|off  # default 1MiB: body buffered to replay once on an invalid token
//		error_response envelope|handle_errors  # default envelope
//	}
//
// The handler hands the token to `reverse_proxy ... { transport tptoken }`.
func parseHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile implements caddyfile.Unmarshaler (syntax: parseHandler).
func (m *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.Errf("tptoken: the handler takes no arguments other than a matcher (got %q); put its options in a block", d.Val())
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] && name != "allow" {
			return d.Errf("tptoken: %s is set twice", name)
		}
		seen[name] = true
		switch name {
		case "appid":
			args := d.RemainingArgs()
			switch {
			case len(args) == 2 && (args[0] == "header" || args[0] == "query"):
				m.AppID = &AppIDSource{From: args[0], Name: args[1]}
			case len(args) == 1 && args[0] == "path":
				m.AppID = &AppIDSource{From: "path"}
			case len(args) == 1 && isPlaceholder(args[0]):
				m.AppID = &AppIDSource{From: "placeholder", Name: args[0]}
			default:
				return d.Errf("appid: want `header <name>`, `query <name>`, `path` or a {placeholder}, got %q", strings.Join(args, " "))
			}
		case "token":
			if err := oneArg(d, &m.Token); err != nil {
				return err
			}
			if m.Token != "authorizer" && m.Token != "component" {
				return d.Errf("token %q: use authorizer or component", m.Token)
			}
		case "allow":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, a := range args {
				if !tokensource.ValidAppID(a) {
					return d.Errf("allow: %q is not a valid appid", a)
				}
			}
			m.Allow = append(m.Allow, args...)
		case "component":
			if err := oneArg(d, &m.Component); err != nil {
				return err
			}
			// Components are looked up by their appid (placeholders such as
			// {env.TP_COMPONENT_APPID} are resolved at provision).
			if !isPlaceholder(m.Component) && !tokensource.ValidAppID(m.Component) {
				return d.Errf("component: %q is not a valid component appid", m.Component)
			}
		case "max_replay_body":
			var s string
			if err := oneArg(d, &s); err != nil {
				return err
			}
			if s == "off" {
				m.MaxReplayBody = -1
				break
			}
			n, err := humanize.ParseBytes(s)
			if err != nil {
				return d.Errf("max_replay_body %q: want a size such as 1MiB, or off", s)
			}
			if n == 0 {
				return d.Errf("max_replay_body 0: use off to disable the replay, or a size such as 1MiB")
			}
			m.MaxReplayBody = int64(n)
		case "error_response":
			if err := oneArg(d, &m.ErrorResponse); err != nil {
				return err
			}
			if m.ErrorResponse != "envelope" && m.ErrorResponse != "handle_errors" {
				return d.Errf("error_response %q: use envelope or handle_errors", m.ErrorResponse)
			}
		default:
			return d.Errf("tptoken: unknown subdirective %q", name)
		}
	}
	return nil
}

// parseEvents parses the `tptoken_events` directive:
//
//	tptoken_events [<matcher>] [<component_appid>] {
//		require_state   # exchange only redirects of links made by `caddy tptoken auth-link`
//	}
//
// With no component, every configured TP's pushes are accepted (each push is
// matched by its signature).
func parseEvents(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Events)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile implements caddyfile.Unmarshaler (syntax: parseEvents).
func (m *Events) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		m.Component = d.Val()
		if !isPlaceholder(m.Component) && !tokensource.ValidAppID(m.Component) {
			return d.Errf("tptoken_events: %q is not a valid component appid", m.Component)
		}
	}
	if d.NextArg() {
		return d.Errf("tptoken_events takes at most one component appid (got %q too)", d.Val())
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "require_state":
			if m.RequireState {
				return d.Errf("tptoken_events: require_state is set twice")
			}
			if d.NextArg() {
				return d.Errf("require_state takes no arguments (got %q)", d.Val())
			}
			m.RequireState = true
		default:
			return d.Errf("tptoken_events: unknown subdirective %q (want require_state)", d.Val())
		}
	}
	return nil
}

// oneArg reads the single argument of the current subdirective; a missing or
// extra argument is an error naming the subdirective.
func oneArg(d *caddyfile.Dispenser, dst *string) error {
	name := d.Val()
	if !d.NextArg() {
		return d.Errf("%s: want one argument, got none", name)
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.Errf("%s: want one argument, got more (%q)", name, d.Val())
	}
	return nil
}

func positiveIntArg(d *caddyfile.Dispenser, dst *int) error {
	name := d.Val()
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return d.Errf("%s %q: want a positive integer", name, s)
	}
	*dst = n
	return nil
}

func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	v, err := caddy.ParseDuration(s)
	if err != nil || v <= 0 {
		return d.Errf("%s %q: want a positive duration such as 10m", name, s)
	}
	*dst = caddy.Duration(v)
	return nil
}

func isPlaceholder(s string) bool {
	return strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}")
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*Events)(nil)
)
