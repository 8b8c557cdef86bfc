package tokensource_test

import (
	"context"
	"strings"
	"testing"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

func TestValidAppIDAcceptsOnlyTheStorageSafeAlphabet(t *testing.T) {
	valid := []string{"tt0123456789abcdef", "a", "A_b-9", strings.Repeat("x", 64)}
	invalid := []string{"", strings.Repeat("x", 65), "tt.01", "tt/01", "../x", "tt 01", "tté", "tt\n", "tt%2F", "{env.X}"}
	for _, s := range valid {
		if !tokensource.ValidAppID(s) {
			t.Errorf("%q rejected", s)
		}
	}
	for _, s := range invalid {
		if tokensource.ValidAppID(s) {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestUnknownAndMalformedAppids(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e := h.engine()
	_, err := e.Token(context.Background(), "tt404")
	if tokensource.KindOf(err) != tokensource.KindUnknownAuthorizer || !strings.Contains(err.Error(), "tt404") {
		t.Fatalf("err = %v, want KindUnknownAuthorizer naming the appid", err)
	}
	for _, bad := range []string{"", "../etc", "a/b", strings.Repeat("x", 65), "tt 1", "tt\x00"} {
		if _, err := e.Token(context.Background(), bad); tokensource.KindOf(err) != tokensource.KindBadAppID {
			t.Errorf("appid %q: err = %v, want KindBadAppID", bad, err)
		}
	}
	if n := len(h.emu.Stats().Calls); n != 0 {
		t.Fatalf("platform called for unknown appids: %v", h.emu.Stats().Calls)
	}
}
