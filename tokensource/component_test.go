package tokensource_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

func TestNoTicketIsAClearError(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e, err := tokensource.New(tokensource.Config{ComponentAppID: testComponent, ComponentSecret: testSecret,
		Endpoint: h.srv.URL, Store: h.store(), Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	_, err = e.ComponentToken(context.Background())
	if tokensource.KindOf(err) != tokensource.KindNoTicket || !strings.Contains(err.Error(), "tptoken_events") {
		t.Fatalf("err = %v", err)
	}
}

func TestV2ComponentTokenIsFetchedOnceAcrossInstances(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	engines := []*tokensource.Engine{h.engine(), h.engine(), h.engine()}
	var wg sync.WaitGroup
	toks := make([]tokensource.Token, 30)
	for i := range toks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if toks[i], err = engines[i%3].ComponentToken(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for i := range toks {
		if toks[i].Value != toks[0].Value {
			t.Fatal("instances hold different v2 component tokens: each fetch invalidates the previous one")
		}
	}
	if n := h.emu.Stats().Total.ComponentTokenFetches; n != 1 {
		t.Fatalf("component token fetches = %d, want 1", n)
	}
}

func TestRejectedComponentTokenIsRefetchedOnce(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	h.emu.SetLifetimes(emulator.Lifetimes{AccessTokenTTL: 10 * time.Minute})
	a := h.engine()
	h.authorize(a, "tt01app")
	// Another system fetches component tokens twice: ours is now two fetches
	// old and dead at once (only the latest two are kept, the grace covers one).
	b := h.engine()
	mustComponent(t, a)
	for range 2 {
		b.InvalidateComponent(mustComponent(t, b))
		h.clock.Advance(time.Second)
		if _, err := b.ComponentToken(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	h.clock.Advance(9 * time.Minute)                     // past the v2 grace and the access token's refresh point
	tok, err := a.Token(context.Background(), "tt01app") // refresh with a rejected component token
	if err != nil {
		t.Fatal(err)
	}
	if _, code := h.downstream(tok); code != 0 {
		t.Fatal("token unusable")
	}
	if s := h.emu.Stats().App("tt01app"); s.Refreshes != 1 || s.Refresh40021 != 0 {
		t.Fatalf("stats = %+v", s)
	}
	if !logged(h, "component token rejected") {
		t.Fatal("the test did not exercise a rejected component token")
	}
}
