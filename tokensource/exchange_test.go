package tokensource_test

import (
	"context"
	"sync"
	"testing"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

func TestExchangedTokenWorksDownstream(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		e := h.engine()
		info := h.authorize(e, "tt01app")
		if info.AppID != "tt01app" || info.State != tokensource.StateActive || info.Family != h.family {
			t.Fatalf("info = %+v", info)
		}
		if len(info.Permissions) == 0 {
			t.Error("permissions of the exchange answer were not kept")
		}
		tok, err := e.Token(context.Background(), "tt01app")
		if err != nil {
			t.Fatal(err)
		}
		if owner, code := h.downstream(tok); owner != "tt01app" || code != 0 {
			t.Fatalf("downstream saw owner %q code %d", owner, code)
		}
		if s := h.emu.Stats().App("tt01app"); s.Exchanges != 1 || s.Refreshes != 0 {
			t.Fatalf("stats = %+v, want one exchange and no refresh", s)
		}
	})
}

func TestSameCodeTwiceExchangesOnce(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	a, b := h.engine(), h.engine()
	code, _ := h.emu.Authorize("tt01app", false)
	var wg sync.WaitGroup
	for i := range 6 { // the platform retries pushes; the redirect may carry the same code
		e := a
		if i%2 == 1 {
			e = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.deliver(e, authorized("tt01app", tokensource.Secret(code), h.clock.Now())); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if s := h.emu.Stats().App("tt01app"); s.Exchanges != 1 {
		t.Fatalf("exchanges = %d, want 1", s.Exchanges)
	}
}
