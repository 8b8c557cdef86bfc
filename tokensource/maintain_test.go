package tokensource_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

func background(c *tokensource.Config) {
	c.MaintainInterval = 10 * time.Millisecond
	c.SweepInterval = 40 * time.Millisecond
	c.RenewRate = 1000
}

// run starts e.Run until the test ends.
func run(t *testing.T, e *tokensource.Engine) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); e.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestIdleAuthorizersRefreshTokenIsRenewedInTheBackground(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	h.emu.SetLifetimes(emulator.Lifetimes{RefreshTokenTTL: 10 * time.Minute})
	a, b := h.engine(background), h.engine(background) // two instances sweep the same storage
	h.authorize(a, "tt01idle")
	run(t, a)
	run(t, b)
	for round := int64(1); round <= 3; round++ {
		h.clock.Advance(6 * time.Minute) // past the margin (half the 10-minute life), before expiry
		eventually(t, "a background renewal", func() bool { return h.emu.Stats().App("tt01idle").Refreshes >= round })
		eventually(t, "the renewal stored", func() bool {
			info, err := a.Info(context.Background(), "tt01idle")
			return err == nil && info.RefreshExpiry.After(h.clock.Now().Add(5*time.Minute))
		})
	}
	// 18 minutes after an authorization whose refresh token lived 10: still
	// alive. a's cached access token may be one that b's renewal rotated away:
	// the platform rejects it and the caller invalidates and asks again, as the
	// transport does.
	tok, err := a.Token(context.Background(), "tt01idle")
	if err != nil {
		t.Fatal(err)
	}
	if _, code := h.downstream(tok); code != 0 {
		a.Invalidate("tt01idle", tok)
		if tok, err = a.Token(context.Background(), "tt01idle"); err != nil {
			t.Fatal(err)
		}
		if _, code := h.downstream(tok); code != 0 {
			t.Fatal("token unusable after one invalidation")
		}
	}
	if s := h.emu.Stats().App("tt01idle"); s.Refresh40021 != 0 || s.Refreshes != 3 || s.Retrieves != 0 {
		t.Fatalf("stats = %+v: want exactly one renewal per period across both instances", s)
	}
	if sum := a.ComponentInfo(context.Background()).Sweep; sum == nil || sum.ByState[tokensource.StateActive] != 1 || sum.EarliestRefreshApp != "tt01idle" {
		t.Fatalf("summary = %+v", sum)
	}
}

func TestActiveAuthorizersAreRefreshedBeforeRequestsNeedIt(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	h.emu.SetLifetimes(emulator.Lifetimes{AccessTokenTTL: 10 * time.Minute})
	e := h.engine(background, func(c *tokensource.Config) { c.RefreshAhead = 2 * time.Minute })
	h.authorize(e, "tt01busy")
	h.authorize(e, "tt02idle")
	first, _ := e.Token(context.Background(), "tt01busy") // traffic
	run(t, e)
	h.clock.Advance(7*time.Minute + 30*time.Second) // within the lead before the refresh point (8 min)
	// The token is still fresh (its refresh point is 8 min): requests keep being
	// served from the cache, and the background swaps in the refreshed one.
	eventually(t, "the background-refreshed token in the cache", func() bool {
		tok, err := e.Token(context.Background(), "tt01busy")
		return err == nil && tok.Value != first.Value
	})
	if n := h.emu.Stats().App("tt01busy").Refreshes; n != 1 {
		t.Fatalf("refreshes = %d, want 1", n)
	}
	if s := h.emu.Stats().App("tt02idle"); s.Refreshes != 0 {
		t.Fatalf("an authorizer without traffic had its access token refreshed: %+v", s)
	}
}

func TestComponentTokenIsKeptFreshInTheBackground(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	e := h.engine(background)
	first, err := e.ComponentToken(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	run(t, e)
	h.clock.Advance(2*time.Hour - 20*time.Minute) // inside the component token's refresh window
	eventually(t, "a new component token", func() bool {
		ci := e.ComponentInfo(context.Background())
		return ci.TokenGeneration > first.Generation
	})
	if n := h.emu.Stats().Total.ComponentTokenFetches; n != 2 {
		t.Fatalf("component token fetches = %d, want 2", n)
	}
}
