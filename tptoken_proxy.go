package tptoken

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// parseProxy parses the `tptoken_proxy` directive: a shortcut, as php_fastcgi
// is for FastCGI, for a tptoken handler followed by the reverse_proxy that
// forwards its requests with `transport tptoken`, in one route:
//
//	tptoken_proxy [<matcher>] [<upstreams...>] {
//		# the handler's options; the defaults are those of a drop-in route
//		appid ...                 # default: token (the appid where the token goes)
//		token ...                 # default: auto (the component token for TP-level APIs)
//		error_response ...        # default: platform (HTTP 200, the code in the envelope)
//		allow <appid...>
//		component <appid>
//		max_replay_body <size>|off
//		# any option of `transport http` (dial_timeout, resolvers, tls_server_name, ...)
//		# any option of reverse_proxy (to, header_up, lb_*, health_*, ...) but transport
//	}
//
// Without an upstream (arguments, `to` or `dynamic`), requests go to the
// component's endpoint: by default its family's platform host
// (https://open.microapp.bytedance.com for v1, https://open.douyin.com for v2),
// where its tokens come from. The upstream is written into the config, never
// taken from the request.
func parseProxy(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	if !h.Next() {
		return nil, h.ArgErr()
	}
	matcherSet, err := h.ExtractMatcherSet()
	if err != nil {
		return nil, err
	}
	h.Next() // the directive's name, again
	name := h.Token()
	upstreams := h.RemainingArgsAsTokens()

	// Sort the block's options by who takes them, keeping each one's tokens
	// (and so the lines errors name).
	var handlerOpts, transportOpts, proxyOpts []caddyfile.Token
	hasUpstream := len(upstreams) > 0
	for nesting := h.Nesting(); h.NextBlock(nesting); {
		opt := h.Val()
		seg := h.NextSegment()
		switch {
		case proxyHandlerOptions[opt]:
			handlerOpts = append(handlerOpts, seg...)
		case httpTransportOptions[opt]:
			transportOpts = append(transportOpts, seg...)
		case opt == "transport":
			return nil, h.Errf("tptoken_proxy: its transport is tptoken's: write the transport's options (dial_timeout, resolvers, ...) directly in the block")
		default:
			hasUpstream = hasUpstream || opt == "to" || opt == "dynamic"
			proxyOpts = append(proxyOpts, seg...)
		}
	}

	handler := new(Handler)
	d := caddyfile.NewDispenser(block(name, "tptoken", nil, handlerOpts, nil))
	if err := handler.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	// An app token route's app is fixed (app, or the only one keeping the
	// kind) unless the block reads it from the request: its token slot
	// holds the client's old token, which the injection replaces.
	if handler.AppID == nil && !isAppKind(handler.Token) {
		handler.AppID = &AppIDSource{From: "token"}
	}
	if handler.Token == "" {
		handler.Token = "auto"
	}
	if handler.ErrorResponse == "" {
		handler.ErrorResponse = "platform"
	}

	if !hasUpstream {
		var u string
		var err error
		if isAppKind(handler.Token) {
			u, err = defaultAppUpstream(h, handler.Token, handler.App)
		} else {
			u, err = defaultUpstream(h, handler.Component)
		}
		if err != nil {
			d := caddyfile.NewDispenser([]caddyfile.Token{name})
			d.Next()
			return nil, d.Errf("tptoken_proxy: %v", err) // on the directive's line
		}
		t := name
		t.Text = u
		upstreams = []caddyfile.Token{t}
	}
	// reverse_proxy <upstreams> { <its options> transport tptoken { <transport options> } }:
	// reverse_proxy's own parser then checks the whole, TLS to https upstreams included.
	transport := []caddyfile.Token{synthetic(name, "transport", 1), synthetic(name, "tptoken", 1)}
	if len(transportOpts) > 0 {
		transport = append(append(append(transport, synthetic(name, "{", 1)), transportOpts...), synthetic(name, "}", 2))
	}
	proxy := new(reverseproxy.Handler)
	d = caddyfile.NewDispenser(block(name, "reverse_proxy", upstreams, proxyOpts, transport))
	if err := proxy.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	if err := proxy.FinalizeUnmarshalCaddyfile(h); err != nil {
		return nil, err
	}

	route := caddyhttp.Route{HandlersRaw: []json.RawMessage{
		caddyconfig.JSONModuleObject(handler, "handler", "tptoken", nil),
		caddyconfig.JSONModuleObject(proxy, "handler", "reverse_proxy", nil),
	}}
	if matcherSet != nil {
		route.MatcherSetsRaw = []caddy.ModuleMap{matcherSet}
	}
	return []httpcaddyfile.ConfigValue{{Class: "route", Value: route}}, nil
}

// block is the tokens of `<name> <args> { <opts> <tail> }`: a directive as
// its own parser reads it. name and args keep their place (the line of the
// tptoken_proxy directive), each option its own lines; the braces and tail
// are synthetic tokens.
func block(at caddyfile.Token, name string, args, opts, tail []caddyfile.Token) []caddyfile.Token {
	head := at
	head.Text = name
	open := at
	open.Text = "{"
	toks := append(append([]caddyfile.Token{head}, args...), open)
	toks = append(toks, opts...)
	toks = append(toks, tail...)
	return append(toks, synthetic(at, "}", 3))
}

// synthetic is a token of the expansion on line n of its own. The Caddyfile
// parsers tell lines apart by file and line number, and a token of another
// file is on another line: the expansion's tokens are of a file of their own,
// so they never share a line with the user's, wherever they are put.
func synthetic(at caddyfile.Token, text string, n int) caddyfile.Token {
	t := at
	t.Text = text
	t.File = at.File + " (tptoken_proxy)"
	t.Line = at.Line + n
	return t
}

// defaultUpstream is the base URL of the component's endpoint, as the
// `tptoken` global option of this Caddyfile sets it (component names it, or
// is "" for the only one).
func defaultUpstream(h httpcaddyfile.Helper, component string) (string, error) {
	app, err := globalApp(h)
	if err != nil {
		return "", err
	}
	if app == nil {
		return "", fmt.Errorf("no upstream: name one (tptoken_proxy https://open.douyin.com), or configure the TP in a tptoken global option, whose endpoint is the default")
	}
	var c *Component
	for _, o := range app.Components {
		if component == "" && len(app.Components) == 1 || o.ComponentAppID == component {
			c = o
		}
	}
	if c == nil {
		if component == "" {
			return "", fmt.Errorf("several TPs are configured: name one with `component <appid>` (its endpoint is the default upstream), or name the upstream")
		}
		return "", fmt.Errorf("component %s is not configured in a tptoken global option: name the upstream", component)
	}
	family, err := apiFamily(c.API)
	if err != nil {
		return "", err
	}
	if c.Endpoint == "" {
		return family.DefaultEndpoint(), nil
	}
	return upstreamOf(c.Endpoint, "component "+c.ComponentAppID+"'s endpoint")
}

// defaultAppUpstream is the base URL of the token endpoint of kind of the
// app named (or the only one keeping kind), as the `tptoken` global option
// of this Caddyfile sets it: the platform host whose APIs take that token.
func defaultAppUpstream(h httpcaddyfile.Helper, kind, appid string) (string, error) {
	app, err := globalApp(h)
	if err != nil {
		return "", err
	}
	if app == nil {
		return "", fmt.Errorf("no upstream: name one (tptoken_proxy https://open.douyin.com), or configure the app in a tptoken global option")
	}
	var found []*AppCredential
	for _, c := range app.AppCredentials {
		if slices.Contains(c.Tokens, kind) && (appid == "" || c.AppID == appid) {
			found = append(found, c)
		}
	}
	switch {
	case len(found) == 0 && appid != "":
		return "", fmt.Errorf("app %s keeps no %s in a tptoken global option: name the upstream", appid, kind)
	case len(found) == 0:
		return "", fmt.Errorf("no app keeps a %s in a tptoken global option: name the upstream", kind)
	case len(found) > 1:
		return "", fmt.Errorf("several apps keep a %s: name one with `app <appid>`, or name the upstream", kind)
	}
	endpoint := found[0].Endpoints[kind]
	if endpoint == "" {
		return tokensource.AppKindEndpoint(kind), nil
	}
	return upstreamOf(endpoint, "app "+found[0].AppID+"'s "+kind+" endpoint")
}

// globalApp is the tptoken global option of this Caddyfile, or nil.
func globalApp(h httpcaddyfile.Helper) (*App, error) {
	opt, _ := h.Option("tptoken").(httpcaddyfile.App)
	if opt.Value == nil {
		return nil, nil
	}
	app := new(App)
	if err := json.Unmarshal(opt.Value, app); err != nil {
		return nil, err
	}
	return app, nil
}

// upstreamOf is an endpoint (what names it) as an upstream: its base URL,
// which must have no path (reverse_proxy upstreams are addresses).
func upstreamOf(endpoint, what string) (string, error) {
	u, err := url.Parse(strings.TrimRight(endpoint, "/"))
	if err != nil || u.Path != "" || u.RawQuery != "" {
		return "", fmt.Errorf("%s %q has a path: name the upstream", what, endpoint)
	}
	return u.String(), nil
}

// proxyHandlerOptions are the tptoken handler's options (parseHandler).
var proxyHandlerOptions = map[string]bool{
	"appid": true, "token": true, "allow": true, "component": true, "max_replay_body": true, "error_response": true,
	"app": true, "inject": true,
}

// httpTransportOptions are the options of Caddy's `transport http`
// (reverseproxy.HTTPTransport.UnmarshalCaddyfile, Caddy v2.11.9), which the
// tptoken transport takes. TestProxyKnowsEveryHTTPTransportOption compares
// the list with Caddy's source.
var httpTransportOptions = map[string]bool{
	"read_buffer": true, "write_buffer": true, "read_timeout": true, "write_timeout": true, "max_response_header": true,
	"proxy_protocol": true, "forward_proxy_url": true, "network_proxy": true, "dial_timeout": true,
	"dial_fallback_delay": true, "response_header_timeout": true, "expect_continue_timeout": true, "resolvers": true,
	"tls": true, "tls_client_auth": true, "tls_insecure_skip_verify": true, "tls_curves": true, "tls_timeout": true,
	"tls_trusted_ca_certs": true, "tls_server_name": true, "tls_renegotiation": true, "tls_except_ports": true,
	"keepalive": true, "keepalive_interval": true, "keepalive_idle_conns": true, "keepalive_idle_conns_per_host": true,
	"versions": true, "compression": true, "max_conns_per_host": true, "tls_trust_pool": true, "local_address": true,
}
