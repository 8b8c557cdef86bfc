package tptoken

import (
	"fmt"
	"reflect"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// A `tptoken` handler only resolves the token: the `tptoken` transport of the
// reverse_proxy after it puts the token on the outgoing request. A
// reverse_proxy without that transport would send every request with no token.
//
// Two guards:
//   - When a config loads (the app's Start, once every app is provisioned),
//     routeProblems walks the http app's routes and refuses the config when a
//     tptoken handler is followed, on every path a request it served takes, by a
//     reverse_proxy without `transport tptoken`. Paths that depend on matchers it
//     cannot compare are left to the second guard.
//   - At request time the handler puts guardHeader on the request; its name is
//     not a valid header field name, so any HTTP transport (HTTP/1, HTTP/2 and
//     HTTP/3 alike) refuses to send the request. The tptoken transport removes
//     it from the request it sends. A request that reaches another transport
//     thus fails before a byte leaves, and the handler answers 502 no_transport
//     and counts it (caddy_tptoken_requests_not_injected_total).

// guardHeader is the request-time guard: an invalid header field name (it
// holds spaces and parentheses) that says what is missing when an HTTP
// transport quotes it in its error.
const guardHeader = "Tptoken guard (add transport tptoken to this reverse_proxy)"

// guardValue is shared by every request: nobody modifies a header's values in place.
var guardValue = []string{""}

// routeProblems lists, for every server, the reverse_proxy handlers that a
// request injected by a tptoken handler certainly reaches without
// `transport tptoken`, and the tptoken handlers that certainly follow another
// one (a `tptoken` directive left beside a `tptoken_proxy`), and what to write.
func routeProblems(app *caddyhttp.App) (transport, doubles []string) {
	names := make([]string, 0, len(app.Servers))
	for name := range app.Servers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		srv := app.Servers[name]
		w := &routeWalker{server: fmt.Sprintf("server %q (listen %s)", name, strings.Join(srv.Listen, " "))}
		w.walk(srv.Routes, "routes", nil, "")
		if srv.Errors != nil {
			w.walk(srv.Errors.Routes, "errors.routes", nil, "")
		}
		named := make([]string, 0, len(srv.NamedRoutes))
		for n := range srv.NamedRoutes {
			named = append(named, n)
		}
		sort.Strings(named)
		for _, n := range named {
			if r := srv.NamedRoutes[n]; r != nil {
				w.walk(caddyhttp.RouteList{*r}, "named_routes."+n, nil, "")
			}
		}
		transport = append(transport, w.problems...)
		doubles = append(doubles, w.doubles...)
	}
	return transport, doubles
}

type routeWalker struct {
	server   string
	problems []string
	doubles  []string
}

// armed says that requests carry a token resolved by the tptoken handler at
// path, and have not been proxied yet.
type armed struct {
	path    string
	site    string
	certain bool             // every such request reaches what follows (no unknown matcher in between)
	route   *caddyhttp.Route // the route at the current list level that armed them (matchers, group)
	list    *caddyhttp.Route // first route of that list: identifies it
}

// walk follows the routes of one list in order, starting with in (requests
// entering the list armed, or nil), and returns what leaves the list armed.
func (w *routeWalker) walk(routes caddyhttp.RouteList, path string, in *armed, site string) *armed {
	cur := in
	for i := range routes {
		r := &routes[i]
		rsite := site
		if h := hostsOf(r); h != "" && site == "" {
			rsite = h
		}
		sameLevel := cur != nil && cur.list == &routes[0]
		if sameLevel && r.Group != "" && r.Group == cur.route.Group {
			continue // requests that ran the arming route skip the rest of its group
		}
		conditional := len(r.MatcherSets) > 0
		// Every armed request enters r when r matches all requests, or exactly
		// the requests of the route that armed them.
		allEnter := !conditional || sameLevel && reflect.DeepEqual(r.MatcherSets, cur.route.MatcherSets)
		reached := cur
		if cur != nil && !allEnter && cur.certain {
			c := *cur
			c.certain = false // whether armed requests enter r is not known
			reached = &c
		}
		out := w.handlers(r.Handlers, fmt.Sprintf("%s[%d].handle", path, i), reached, rsite)
		armedHere := out != nil && (reached == nil || out.path != reached.path)
		if armedHere {
			c := *out
			c.route, c.list = r, &routes[0] // later routes are compared with r
			out = &c
		}
		switch {
		case !armedHere && out != nil:
			// armed requests passed through r (entered or not) and go on; as
			// before, unless a subroute of r may have ended some of them
			if out != reached {
				cur = out
			}
			if r.Terminal {
				cur = uncertainUnless(allEnter, cur) // those that entered end here
			}
		case allEnter || armedHere:
			cur = out // nil: r ended them
			if r.Terminal {
				cur = nil
			}
		default:
			cur = uncertainUnless(false, cur) // armed requests that entered r ended there; the others go on
		}
	}
	return cur
}

// uncertainUnless is nil when every armed request ended (all), else a
// copy of cur that no longer claims every armed request goes on.
func uncertainUnless(all bool, cur *armed) *armed {
	if all || cur == nil {
		return nil
	}
	c := *cur
	c.certain = false
	return &c
}

// handlers follows one route's handlers.
func (w *routeWalker) handlers(hs []caddyhttp.MiddlewareHandler, path string, cur *armed, site string) *armed {
	for j, h := range hs {
		hpath := fmt.Sprintf("%s[%d]", path, j)
		switch h := h.(type) {
		case *Handler:
			if cur != nil && cur.certain {
				w.reportDouble(cur, hpath, site)
			}
			cur = &armed{path: hpath, site: site, certain: true}
		case *reverseproxy.Handler:
			if _, ok := h.Transport.(*Transport); !ok && cur != nil && cur.certain {
				w.report(cur, hpath, site)
			}
			return nil // reverse_proxy ends the chain
		case *caddyhttp.Subroute:
			cur = w.walk(h.Routes, hpath+".routes", cur, site)
		case *caddyhttp.StaticResponse, *caddyhttp.StaticError:
			return nil
		}
	}
	return cur
}

// where names the server and site of a problem.
func (w *routeWalker) where(site string) string {
	if site != "" {
		return w.server + ", site " + site
	}
	return w.server
}

func (w *routeWalker) report(a *armed, proxy, site string) {
	w.problems = append(w.problems, fmt.Sprintf(
		"%s: the reverse_proxy at %s follows the tptoken handler at %s without `transport tptoken`, so every request that handler serves "+
			"would leave without its token. Write: reverse_proxy <upstream> { transport tptoken } (JSON: \"transport\": {\"protocol\": \"tptoken\"})",
		w.where(site), proxy, a.path))
}

func (w *routeWalker) reportDouble(a *armed, second, site string) {
	w.doubles = append(w.doubles, fmt.Sprintf(
		"%s: the tptoken handler at %s follows the tptoken handler at %s on every request that one serves; one tptoken handler "+
			"serves a request (the second would refuse it as a request loop): remove one (tptoken_proxy has its own)", w.where(site), second, a.path))
}

// hostsOf names the hosts a route matches (a Caddyfile site), if any.
func hostsOf(r *caddyhttp.Route) string {
	var hosts []string
	for _, set := range r.MatcherSets {
		for _, m := range set {
			if h, ok := m.(*caddyhttp.MatchHost); ok {
				hosts = append(hosts, *h...)
			}
		}
	}
	return strings.Join(hosts, " ")
}

// checkRoutes refuses a config whose routes would send requests without
// their token. It runs when the app starts: every app is provisioned then, so
// the http app's handlers are built (Provision cannot see them: the http app
// may still be provisioning, its handlers being what loads this app).
func (a *App) checkRoutes() error {
	if a.ctx.Context == nil {
		return nil
	}
	v, err := a.ctx.AppIfConfigured("http")
	if err != nil {
		return nil // no http app: no route to check
	}
	app, ok := v.(*caddyhttp.App)
	if !ok {
		return nil
	}
	transport, doubles := routeProblems(app)
	var parts []string
	if len(transport) > 0 {
		parts = append(parts, fmt.Sprintf("%d reverse_proxy handler(s) lack `transport tptoken`: %s", len(transport), strings.Join(transport, "; ")))
	}
	if len(doubles) > 0 {
		parts = append(parts, fmt.Sprintf("%d tptoken handler(s) follow another one: %s", len(doubles), strings.Join(doubles, "; ")))
	}
	if parts == nil {
		return nil
	}
	return configError(a.logger, fmt.Errorf("tptoken: %s", strings.Join(parts, "; ")))
}
