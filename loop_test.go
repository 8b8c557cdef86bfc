package tptoken

import (
	"net/http"
	"slices"
	"testing"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

func TestHopMarkIsFoundOnlyAsAViaEntryOfItsOwn(t *testing.T) {
	for via, want := range map[string]bool{
		"1.1 tptoken":                          true,
		"1.0 proxy, 1.1 TPtoken , 1.1 Caddy":   true,
		"1.1 Caddy":                            false,
		"1.1 tptoken-ingress":                  false,
		"1.1 proxy (says 1.1 tptoken somehow)": false,
		"":                                     false,
	} {
		if got := marked([]string{via}); got != want {
			t.Errorf("marked(%q) = %v, want %v", via, got, want)
		}
	}
}

// A request that came through other proxies (a Caddy ingress, a corporate
// proxy: each adds its Via entry) is served as any other: only the mark
// refuses a request. What it forwards keeps the client's entries, then the
// mark, then reverse_proxy's own; the client's request is left as it came.
func TestARequestThroughOtherProxiesIsServedAndKeepsItsVia(t *testing.T) {
	x := newE2E(t, tokensource.V2, emulator.Lifetimes{})
	x.authorize("tt01app")
	a := x.call("GET", x.apiPath(), http.Header{"X-Authorizer-Appid": {"tt01app"}, "Via": {"1.1 Caddy", "1.0 corporate-proxy"}}, "")
	if a.Status != 200 || a.Errno != 0 {
		t.Fatalf("a request with a Via of other proxies: %+v", a)
	}
	got := x.tap.lastRequest().Header.Values("Via")
	if want := []string{"1.1 Caddy", "1.0 corporate-proxy", hopMark, "1.1 Caddy"}; !slices.Equal(got, want) {
		t.Fatalf("forwarded Via %q, want %q", got, want)
	}
}

// The handler restores the client's Via, so that Caddy's logs and the
// handlers after the route see the request as it came.
func TestHopMarkIsRemovedFromTheClientsRequest(t *testing.T) {
	for _, via := range [][]string{nil, {"1.1 Caddy"}} {
		h := http.Header{}
		if via != nil {
			h["Via"] = via
		}
		restore := addHopMark(h)
		if !marked(h["Via"]) {
			t.Fatalf("no mark added to %q", via)
		}
		removeHopMark(h, restore)
		if !slices.Equal(h["Via"], via) || (via == nil && h["Via"] != nil) {
			t.Fatalf("Via %q after the request, want %q", h["Via"], via)
		}
		if len(via) > 0 && via[0] != "1.1 Caddy" {
			t.Fatal("the client's Via slice was written to")
		}
	}
}
