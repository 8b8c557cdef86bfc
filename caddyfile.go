package tptoken

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("tptoken", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("tptoken", parseHandler)
	httpcaddyfile.RegisterDirectiveOrder("tptoken", httpcaddyfile.Before, "reverse_proxy")
	httpcaddyfile.RegisterDirective("tptoken_proxy", parseProxy) // tptoken_proxy.go
	httpcaddyfile.RegisterDirectiveOrder("tptoken_proxy", httpcaddyfile.After, "reverse_proxy")
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
//		rebuild_on_empty                       # rebuild from the platform's authorized-app list when storage has no records (once per cluster)
//		storage              <module> { ... }  # storage for tptoken records; default: Caddy's storage
//		metrics_per_appid                      # add metrics labelled by authorizer appid (whole app; opt-in)
//		max_replay_memory    <size>            # request bodies buffered for replays, all requests together (whole app); default 64MiB
//		app <appid> { ... }                    # an app whose own tokens tptoken keeps (caddyfile_apps.go); may repeat
//	}
//
// A block with app blocks and none of the component options configures no
// component: tptoken then keeps only those apps' tokens.
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
	if c != nil {
		app.Components = append(app.Components, c)
	}
	return httpcaddyfile.App{Name: "tptoken", Value: caddyconfig.JSON(app, nil)}, nil
}

// unmarshalComponent parses one block. prev holds the components and storage of
// the blocks before it: a repeated component_appid or a different storage is an
// error on the line that sets it. A block of app blocks only (and app-wide
// options) gives no component (nil).
func unmarshalComponent(d *caddyfile.Dispenser, prev *App) (*Component, json.RawMessage, error) {
	c := new(Component)
	var storage json.RawMessage
	d.Next() // the option name
	if d.NextArg() {
		return nil, nil, d.Errf("tptoken: the global option takes no arguments (got %q); put its options in a block", d.Val())
	}
	seen := map[string]bool{}
	apps := 0
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] && name != "app" {
			return nil, nil, d.Errf("tptoken: %s is set twice", name)
		}
		seen[name] = true
		var err error
		switch name {
		case "app":
			err = unmarshalApp(d, prev)
			apps++
		case "component_appid":
			err = appIDArg(d, &c.ComponentAppID)
			for _, o := range prev.Components {
				if err == nil && o.ComponentAppID == c.ComponentAppID {
					err = at(d, duplicateComponent(c.ComponentAppID))
				}
			}
		case "component_appsecret":
			err = oneArg(d, &c.ComponentAppSecret)
		case "message_token":
			err = oneArg(d, &c.MessageToken)
		case "encoding_aes_key":
			err = oneArg(d, &c.EncodingAESKey)
			if err == nil && !isPlaceholder(c.EncodingAESKey) {
				err = at(d, checkEncodingAESKey(c.EncodingAESKey))
			}
		case "api":
			err = oneArg(d, &c.API)
			if err == nil {
				_, err = apiFamily(c.API)
				err = at(d, err)
			}
		case "endpoint":
			err = oneArg(d, &c.Endpoint)
			if err == nil {
				err = at(d, checkEndpoint(c.Endpoint))
			}
		case "refresh_ahead":
			err = durationArg(d, &c.RefreshAhead)
		case "refresh_token_margin":
			err = durationArg(d, &c.RefreshTokenMargin)
		case "encryption_key":
			err = encryptionKeyArg(d, &c.EncryptionKey)
		case "previous_encryption_keys":
			err = previousKeysArgs(d, &c.PreviousEncryptionKeys)
		case "timeout":
			err = durationArg(d, &c.Timeout)
		case "lock_timeout":
			err = durationArg(d, &c.LockTimeout)
		case "max_concurrent_calls":
			err = positiveIntArg(d, &c.MaxConcurrentCalls)
		case "renew_rate":
			var v string
			if err = oneArg(d, &v); err == nil {
				if c.RenewRate, err = strconv.ParseFloat(v, 64); err != nil {
					err = invalid(name, v, wantRenewRate)
				} else {
					err = checkRenewRate(c.RenewRate)
				}
				err = at(d, err)
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
			err = flagArg(d, &c.SingleInstance)
		case "rebuild_on_empty":
			err = flagArg(d, &c.RebuildOnEmpty)
		case "metrics_per_appid":
			err = flagArg(d, &prev.MetricsPerAppID)
		case "max_replay_memory":
			var v string
			var n int64
			if err = oneArg(d, &v); err == nil {
				if n, err = parseSize(d, name, v, wantReplayMemory); err == nil {
					err = at(d, checkMaxReplayMemory(n))
				}
			}
			if err == nil && prev.MaxReplayMemory != 0 && prev.MaxReplayMemory != n {
				err = d.Errf("max_replay_memory is app-wide: an earlier tptoken block set it to %d bytes", prev.MaxReplayMemory)
			}
			prev.MaxReplayMemory = n
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
	if apps > 0 && onlyAppWide(seen) {
		return nil, storage, nil
	}
	for _, err := range []error{
		checkRequired(c),
		checkPushKeys(c.MessageToken, c.EncodingAESKey),
		checkPreviousKeys(c.EncryptionKey, c.PreviousEncryptionKeys),
	} {
		if err != nil {
			return nil, nil, at(d, err)
		}
	}
	return c, storage, nil
}

// onlyAppWide reports whether a block set no component option: app blocks
// and options of the whole app only.
func onlyAppWide(seen map[string]bool) bool {
	for name := range seen {
		switch name {
		case "app", "storage", "metrics_per_appid", "max_replay_memory":
		default:
			return false
		}
	}
	return true
}

// appIDArg reads an option's one appid (checked unless a placeholder,
// resolved at provision).
func appIDArg(d *caddyfile.Dispenser, dst *string) error {
	name := d.Val()
	if err := oneArg(d, dst); err != nil {
		return err
	}
	return checkAppIDAt(d, name, *dst)
}

// checkAppIDAt checks an appid read at d's line, unless it is a placeholder.
func checkAppIDAt(d *caddyfile.Dispenser, option, v string) error {
	if isPlaceholder(v) {
		return nil
	}
	return at(d, checkAppID(option, v))
}

// encryptionKeyArg reads `encryption_key <key>` (checked unless a placeholder).
func encryptionKeyArg(d *caddyfile.Dispenser, dst *string) error {
	name := d.Val()
	if err := oneArg(d, dst); err != nil || isPlaceholder(*dst) {
		return err
	}
	_, err := encryptionKey(name, *dst)
	return at(d, err)
}

// previousKeysArgs reads `previous_encryption_keys <key>...` (each checked
// unless a placeholder).
func previousKeysArgs(d *caddyfile.Dispenser, dst *[]string) error {
	name := d.Val()
	*dst = d.RemainingArgs()
	if len(*dst) == 0 {
		return d.Errf("previous_encryption_keys: want one or more keys (for example {env.TP_STORAGE_KEY_OLD})")
	}
	for i, k := range *dst {
		if !isPlaceholder(k) {
			if _, err := encryptionKey(fmt.Sprintf("%s[%d]", name, i), k); err != nil {
				return at(d, err)
			}
		}
	}
	return nil
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
	if err != nil {
		return at(d, invalid("redirect_exchanges", args[0], wantExchanges))
	}
	if err := checkRedirectExchanges(n); err != nil {
		return at(d, err)
	}
	c.RedirectExchanges = n
	if len(args) == 2 {
		w, err := caddy.ParseDuration(args[1])
		if err != nil {
			return at(d, invalid("redirect_exchanges window", args[1], wantDuration))
		}
		if err := checkDuration("redirect_exchanges window", caddy.Duration(w)); err != nil {
			return at(d, err)
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
//		appid token               # or: where the token goes (header access-token, x-token, access_token;
//		                          # query authorizer_access_token, ...): every such place is removed
//		token authorizer|component|auto|client_token|app_access_token  # default authorizer; component for
//		                          # TP-level APIs; auto: by path; an app's own token (handler_apps.go)
//		allow <appid...>          # optional allow list; may repeat
//		component <appid>         # which TP, when the app has several
//		app <appid>               # app token routes: which app (default: the only one keeping the kind,
//		                          # or read from the request with appid ...)
//		inject header|query|body [<name>]  # app token routes: where the token goes; default header access-token
//		                          # (query and body: access_token)
//		max_replay_body <size>|off  # default 1MiB: body buffered to replay once on an invalid token
//		error_response envelope|platform|handle_errors  # default envelope
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
			case len(args) >= 1 && len(args) <= 2 && (args[0] == "header" || args[0] == "query"):
				m.AppID = &AppIDSource{From: args[0]} // without a name: checkAppIDSource says what to write
				if len(args) == 2 {
					m.AppID.Name = args[1]
				}
			case len(args) == 1 && (args[0] == "path" || args[0] == "token"):
				m.AppID = &AppIDSource{From: args[0]}
			case len(args) == 1 && isPlaceholder(args[0]):
				m.AppID = &AppIDSource{From: "placeholder", Name: args[0]}
			default:
				return d.Errf("appid: want `header <name>`, `query <name>`, `path`, `token` or a {placeholder}, got %q", strings.Join(args, " "))
			}
			if err := checkAppIDSource(m.AppID); err != nil {
				return at(d, err)
			}
		case "token":
			if err := oneArg(d, &m.Token); err != nil {
				return err
			}
			if err := checkToken(m.Token); err != nil {
				return at(d, err)
			}
		case "allow":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, a := range args {
				if err := checkAppID(name, a); err != nil {
					return at(d, err)
				}
			}
			m.Allow = append(m.Allow, args...)
		case "component":
			// Components are looked up by their appid (placeholders such as
			// {env.TP_COMPONENT_APPID} are resolved at provision).
			if err := appIDArg(d, &m.Component); err != nil {
				return err
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
			n, err := parseSize(d, name, s, wantReplayBody)
			if err != nil {
				return err
			}
			if err := checkMaxReplayBody(n); err != nil {
				return at(d, err)
			}
			m.MaxReplayBody = n
		case "error_response":
			if err := oneArg(d, &m.ErrorResponse); err != nil {
				return err
			}
			if err := checkErrorResponse(m.ErrorResponse); err != nil {
				return at(d, err)
			}
		case "app":
			if err := appIDArg(d, &m.App); err != nil {
				return err
			}
		case "inject":
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return d.Errf("inject: want header|query|body [<name>], got %d arguments", len(args))
			}
			m.Inject = &InjectPlace{In: args[0], Name: defaultInjectName[args[0]]}
			if len(args) == 2 {
				m.Inject.Name = args[1]
			}
			if err := checkInject(m.Inject); err != nil {
				return at(d, err)
			}
		default:
			return d.Errf("tptoken: unknown subdirective %q", name)
		}
	}
	if err := checkAppRoute(m.Token, m.App, m.AppID, m.Component, m.Allow, m.Inject); err != nil {
		return at(d, err)
	}
	return at(d, checkAllowWithToken(m.Token, m.Allow))
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
		if err := checkAppIDAt(d, "tptoken_events component", m.Component); err != nil {
			return err
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
	if err != nil {
		return at(d, invalid(name, s, wantPositive))
	}
	if err := checkPositive(name, n); err != nil {
		return at(d, err)
	}
	*dst = n
	return nil
}

// flagArg reads an option that takes no argument: its presence sets dst.
func flagArg(d *caddyfile.Dispenser, dst *bool) error {
	name := d.Val()
	if d.NextArg() {
		return d.Errf("%s takes no arguments (got %q)", name, d.Val())
	}
	*dst = true
	return nil
}

func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	v, err := caddy.ParseDuration(s)
	if err != nil {
		return at(d, invalid(name, s, wantDuration))
	}
	if err := checkDuration(name, caddy.Duration(v)); err != nil {
		return at(d, err)
	}
	*dst = caddy.Duration(v)
	return nil
}

// parseSize reads a size such as 64MiB; a value it cannot read is reported
// with want, the rule's text.
func parseSize(d *caddyfile.Dispenser, option, s, want string) (int64, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil || n > math.MaxInt64 {
		return 0, at(d, invalid(option, s, want))
	}
	return int64(n), nil
}

// at puts the line of the current token on err, a rule's message (validate.go); nil stays nil.
func at(d *caddyfile.Dispenser, err error) error {
	if err == nil {
		return nil
	}
	return d.WrapErr(err)
}

func isPlaceholder(s string) bool {
	return strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}")
}
