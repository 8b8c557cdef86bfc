package tptoken

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
)

// A sidecar that stands in for the platform's hosts (README: Drop-in) must
// reach the real platform under the same names. If it resolves them to itself
// (the hosts file the apps were given is also its own), every request comes
// back to it with the token the first pass injected, in the very place the
// `appid token` carrier reads. Two safety nets:
//
//   - The hop mark. The handler adds hopMark to the Via header of every
//     request it hands to the transport, so every request tptoken sends
//     carries it (reverse_proxy copies the request's headers and appends its
//     own Via entry after ours). Via is the header HTTP has for this: every
//     server accepts it, and reverse_proxy sends one anyway, so the mark adds
//     no header to the request (a header of our own cost about 4,000
//     instructions a request on the wire: BENCHMARKS.md). A tptoken handler
//     refuses a request whose Via holds the mark before reading any carrier:
//     a loop ends at the second pass, answered without the token (the request
//     is never read, echoed or forwarded again), 508 or, with error_response
//     platform, HTTP 200 in the family's envelope.
//   - A check at start-up (loopCheck): in the background, each upstream of a
//     `transport tptoken` reverse_proxy is resolved, as its transport resolves
//     it; one that resolves to an address of this host on which a server of
//     this Caddy with a tptoken handler listens is logged at ERROR, naming the
//     upstream and the fix.

// hopMark is the Via entry that marks a request sent by a tptoken transport
// (received-protocol 1.1, received-by the pseudonym tptoken: RFC 9110 §7.6.3).
const hopMark = "1.1 tptoken"

// hopValue is the Via of a request that had none, shared by every request:
// nobody modifies a header's values in place (reverse_proxy appends its own
// entry to a copy: the slice has no room left).
var hopValue = []string{hopMark}

// marked reports whether a request's Via entries hold the hop mark. An entry
// may list several hops ("1.1 tptoken, 1.1 Caddy").
func marked(via []string) bool {
	for _, v := range via {
		for len(v) > 0 {
			entry, rest, _ := strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(entry), hopMark) {
				return true
			}
			v = rest
		}
	}
	return false
}

// addHopMark adds the mark to h's Via and returns what to restore once the
// request is done with (h is the client's request, which Caddy logs).
func addHopMark(h http.Header) (restore []string) {
	restore = h["Via"]
	if len(restore) == 0 {
		h["Via"] = hopValue
	} else {
		h["Via"] = append(restore[:len(restore):len(restore)], hopMark)
	}
	return restore
}

// removeHopMark puts back the Via that addHopMark found.
func removeHopMark(h http.Header, restore []string) {
	if restore == nil {
		delete(h, "Via")
	} else {
		h["Via"] = restore
	}
}

// errLoop: the request was sent by a tptoken transport, to this sidecar.
type errLoop struct{ host string }

func (e errLoop) Error() string {
	return "request loop: this request was already sent once by a tptoken sidecar (Via: " + hopMark + "), so the platform host " +
		strconv.Quote(e.host) + " resolves to this sidecar for Caddy itself; resolve the platform's names to the sidecar for the apps only " +
		"(README: Drop-in)"
}

// errTwoHandlers: two tptoken handlers on a request's way to the transport.
type errTwoHandlers struct{}

func (errTwoHandlers) Error() string {
	return "two tptoken handlers serve this request: the Caddy configuration must be fixed (remove one; tptoken_proxy has its own)"
}

// refuseLoop answers a request whose Via holds the hop mark. It is answered
// here even with error_response handle_errors: a handler error makes Caddy log
// the request's headers, and a looped request carries the token injected
// before.
func (h *Handler) refuseLoop(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer) error {
	if injectionOf(r) != nil {
		// Not a loop: another tptoken handler serves this request, on its way
		// to the transport (a configuration the load-time check could not prove).
		h.loopLog.Do(func() {
			h.logger.Error("a second tptoken handler met a request another one serves: remove one of them (tptoken_proxy has its own)",
				zap.String("host", r.Host), zap.String("path", r.URL.Path))
		})
		return h.answer(w, repl, errTwoHandlers{})
	}
	metricsFor(h.comp.appID).loops.Inc()
	h.loopLog.Do(func() {
		h.logger.Error("request loop refused: a request sent by a tptoken transport came back to this sidecar; "+
			"its upstream host resolves to this Caddy: resolve the platform's names to the sidecar for the apps only (README: Drop-in)",
			zap.String("host", r.Host), zap.String("path", r.URL.Path))
	})
	return h.answer(w, repl, errLoop{host: r.Host})
}

// loopCheckTimeout bounds the whole start-up check.
const loopCheckTimeout = 10 * time.Second

// maxLoopCheckHosts bounds the names the start-up check resolves.
const maxLoopCheckHosts = 32

// upstreamName is an upstream (a host name or an address) of a `transport
// tptoken` reverse_proxy.
type upstreamName struct {
	host, port string
	resolver   *net.Resolver // the transport's (resolvers), or the default
}

// loopCheck resolves, in the background, the upstreams of the http app's
// tptoken transports and logs those that resolve to this Caddy. It runs
// once per config (the app's Start) and stops with it (Stop).
type loopCheck struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// startLoopCheck starts the check for the http app of ctx, if any.
func startLoopCheck(ctx caddy.Context, logger *zap.Logger) *loopCheck {
	if ctx.Context == nil {
		return nil
	}
	v, err := ctx.AppIfConfigured("http")
	if err != nil {
		return nil
	}
	app, ok := v.(*caddyhttp.App)
	if !ok {
		return nil
	}
	names, listen := upstreamNames(app)
	if len(names) == 0 || len(listen) == 0 {
		return nil
	}
	c, cancel := context.WithTimeout(context.Background(), loopCheckTimeout)
	lc := &loopCheck{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(lc.done)
		defer cancel()
		for _, n := range names {
			if addr := loopingAddress(c, n, listen); addr != "" {
				logger.Error("an upstream of `transport tptoken` resolves to this Caddy: requests sent there come back to it "+
					"(each is refused as a request loop). Resolve the platform's names to the sidecar for the apps only "+
					"(their hosts files, container extra_hosts, a DNS view for their subnets), not for Caddy (README: Drop-in)",
					zap.String("upstream", net.JoinHostPort(n.host, n.port)), zap.String("resolves_to", addr))
			}
		}
		logger.Debug("request loop check of the upstreams done", zap.Int("upstreams", len(names)))
	}()
	return lc
}

// stop ends the check and waits for it.
func (lc *loopCheck) stop() {
	if lc != nil {
		lc.cancel()
		<-lc.done
	}
}

// upstreamNames lists the static upstreams of the tptoken transports of app
// (at most maxLoopCheckHosts), and the addresses of its servers that run a
// tptoken handler: a request comes back to a tptoken handler only there. (A
// sandbox's emulator served by the same Caddy is an upstream on a server of
// its own, without one.)
func upstreamNames(app *caddyhttp.App) ([]upstreamName, []caddy.NetworkAddress) {
	var names []upstreamName
	seen := map[string]bool{}
	var handlers bool // the server being walked runs a tptoken handler
	var walk func(caddyhttp.RouteList)
	walk = func(routes caddyhttp.RouteList) {
		for _, r := range routes {
			for _, h := range r.Handlers {
				switch h := h.(type) {
				case *Handler:
					handlers = true
				case *caddyhttp.Subroute:
					walk(h.Routes)
				case *reverseproxy.Handler:
					t, ok := h.Transport.(*Transport)
					if !ok {
						continue
					}
					for _, u := range h.Upstreams {
						host, port, err := net.SplitHostPort(u.Dial)
						if err != nil || strings.ContainsAny(host, "{}") || seen[u.Dial] || len(names) == maxLoopCheckHosts {
							continue // a placeholder, or one already listed
						}
						seen[u.Dial] = true
						names = append(names, upstreamName{host: host, port: port, resolver: transportResolver(t)})
					}
				}
			}
		}
	}
	var listen []caddy.NetworkAddress
	for _, srv := range app.Servers {
		handlers = false
		walk(srv.Routes)
		for n := range srv.NamedRoutes {
			if r := srv.NamedRoutes[n]; r != nil {
				walk(caddyhttp.RouteList{*r})
			}
		}
		if !handlers {
			continue
		}
		for _, l := range srv.Listen {
			if na, err := caddy.ParseNetworkAddress(l); err == nil {
				listen = append(listen, na)
			}
		}
	}
	return names, listen
}

// transportResolver resolves as the transport does: with its `resolvers`
// when it has some (a Go resolver, which still reads /etc/hosts first).
func transportResolver(t *Transport) *net.Resolver {
	if t.Resolver == nil || len(t.Resolver.Addresses) == 0 {
		return net.DefaultResolver
	}
	var addrs []caddy.NetworkAddress
	for _, a := range t.Resolver.Addresses {
		if na, err := caddy.ParseNetworkAddressWithDefaults(a, "udp", 53); err == nil {
			addrs = append(addrs, na)
		}
	}
	if len(addrs) == 0 {
		return net.DefaultResolver
	}
	var mu sync.Mutex
	next := 0
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		mu.Lock()
		na := addrs[next%len(addrs)]
		next++
		mu.Unlock()
		var d net.Dialer
		return d.DialContext(ctx, na.Network, na.JoinHostPort(0))
	}}
}

// loopingAddress is the address n resolves to that is this host's and on a
// port a server of this Caddy listens on, or "".
func loopingAddress(ctx context.Context, n upstreamName, listen []caddy.NetworkAddress) string {
	port, err := strconv.ParseUint(n.port, 10, 16)
	if err != nil {
		return ""
	}
	ips, err := n.resolver.LookupIPAddr(ctx, n.host)
	if err != nil {
		return ""
	}
	var local []net.Addr
	for _, ip := range ips {
		if !ip.IP.IsLoopback() {
			if local == nil {
				if local, err = net.InterfaceAddrs(); err != nil {
					return ""
				}
			}
			if !ownAddress(ip.IP, local) {
				continue
			}
		}
		for _, l := range listen {
			if uint(port) < l.StartPort || uint(port) > l.EndPort || l.IsUnixNetwork() {
				continue
			}
			if lip := net.ParseIP(l.Host); l.Host == "" || lip != nil && (lip.IsUnspecified() || lip.Equal(ip.IP)) {
				return ip.IP.String()
			}
		}
	}
	return ""
}

func ownAddress(ip net.IP, addrs []net.Addr) bool {
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}
