package tokensource_test

import (
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
