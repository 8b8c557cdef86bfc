package tokensource_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

func TestValidAuthorizationCodeKeepsJunkAwayAndLetsPlausibleCodesThrough(t *testing.T) {
	for _, ok := range []string{
		"0f3c9a1b2d4e5f60718293a4b5c6d7e8f9a0b1c2", // the emulator's shape: 40 hex digits
		"queryauthcode@@@Abc-_.~+/=:*09",
		"ABCDEFGH",
	} {
		if !tokensource.ValidAuthorizationCode(ok) {
			t.Errorf("%q refused", ok)
		}
	}
	for _, bad := range []string{"", "short", "with space 0123456789", "<script>alert(1)</script>", "line\nbreak0123",
		"código0123456", string(make([]byte, tokensource.MaxCodeLen+1))} {
		if tokensource.ValidAuthorizationCode(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}

func randomCode() tokensource.Secret {
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	return tokensource.Secret(hex.EncodeToString(b))
}

func TestRedirectExchangesStayWithinTheirBudgetAndCheapAnswersCostNoCall(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e := h.engine(func(c *tokensource.Config) { c.RedirectExchanges, c.RedirectWindow = 3, time.Minute })
	ctx := context.Background()
	h.authorize(e, "tt01known") // its code is in the code index now
	calls := func() int64 { return h.emu.Stats().Calls[emulator.OpExchange] }
	start := calls()

	var exchanged, limited int
	for range 10 {
		_, err := e.ExchangeRedirectCode(ctx, randomCode())
		switch {
		case tokensource.KindOf(err) == tokensource.KindPlatform:
			exchanged++ // the platform said 40018: a made-up code
		case errors.Is(err, tokensource.ErrRedirectRateLimited):
			limited++
			var ee *tokensource.Error
			if !errors.As(err, &ee) || ee.RetryAfter < time.Second || ee.Kind != tokensource.KindUnavailable {
				t.Fatalf("a rate-limited redirect: %#v", err)
			}
		default:
			t.Fatalf("made-up code: %v", err)
		}
	}
	if exchanged != 3 || limited != 7 || calls()-start != 3 {
		t.Fatalf("10 made-up codes with a budget of 3: %d exchanged, %d refused, %d platform calls", exchanged, limited, calls()-start)
	}

	// Answers that cost no platform call, budget spent or not.
	failed := randomCode()
	h.clock.Advance(20 * time.Second) // one more unit of budget (3 per minute)
	if _, err := e.ExchangeRedirectCode(ctx, failed); tokensource.KindOf(err) != tokensource.KindPlatform {
		t.Fatalf("a made-up code with budget left: %v", err)
	}
	n := calls()
	h.clock.Advance(time.Minute)
	for range 3 {
		if _, err := e.ExchangeRedirectCode(ctx, failed); !errors.Is(err, tokensource.ErrCodeFailedRecently) {
			t.Fatalf("the same failed code again: %v", err)
		}
	}
	for _, junk := range []string{"x", "<img src=x>", "0123456789 abcdef"} {
		if _, err := e.ExchangeRedirectCode(ctx, tokensource.Secret(junk)); !errors.Is(err, tokensource.ErrCodeMalformed) ||
			tokensource.KindOf(err) != tokensource.KindBadInput {
			t.Fatalf("junk %q: %v", junk, err)
		}
	}
	if calls() != n {
		t.Fatalf("a failed code sent again or junk sent: %d platform calls", calls()-n)
	}

	// A merchant's redirect after the push exchanged its code: the code index.
	code, err := h.emu.Authorize("tt02app", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.deliver(e, authorized("tt02app", tokensource.Secret(code), h.clock.Now())); err != nil {
		t.Fatal(err)
	}
	n = calls()
	info, err := e.ExchangeRedirectCode(ctx, tokensource.Secret(code))
	if err != nil || info.AppID != "tt02app" || calls() != n {
		t.Fatalf("redirect after the push: %+v %v (%d calls)", info, err, calls()-n)
	}

	// A genuine code whose push has not come yet is exchanged within the budget.
	code, err = h.emu.Authorize("tt03app", false)
	if err != nil {
		t.Fatal(err)
	}
	info, err = e.ExchangeRedirectCode(ctx, tokensource.Secret(code))
	if err != nil || info.AppID != "tt03app" {
		t.Fatalf("a genuine redirect: %+v %v", info, err)
	}
	if tok, err := e.Token(ctx, "tt03app"); err != nil {
		t.Fatal(err)
	} else if owner, _ := h.downstream(tok); owner != "tt03app" {
		t.Fatalf("token of tt03app owned by %q", owner)
	}
	h.assertNoSecretsLogged()
}

func TestRedirectExchangesOffAnswerOnlyFromTheCodeIndex(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	e := h.engine(func(c *tokensource.Config) { c.RedirectExchanges = -1 })
	ctx := context.Background()
	code, err := h.emu.Authorize("tt01app", false)
	if err != nil {
		t.Fatal(err)
	}
	n := h.emu.Stats().Calls[emulator.OpExchange]
	if _, err := e.ExchangeRedirectCode(ctx, tokensource.Secret(code)); !errors.Is(err, tokensource.ErrRedirectExchangeOff) {
		t.Fatalf("redirect before the push with exchanges off: %v", err)
	}
	if got := h.emu.Stats().Calls[emulator.OpExchange]; got != n {
		t.Fatalf("%d exchange calls with redirect exchanges off", got-n)
	}
	if err := h.deliver(e, authorized("tt01app", tokensource.Secret(code), h.clock.Now())); err != nil { // the push
		t.Fatal(err)
	}
	if info, err := e.ExchangeRedirectCode(ctx, tokensource.Secret(code)); err != nil || info.AppID != "tt01app" {
		t.Fatalf("redirect after the push: %+v %v", info, err)
	}
}

func TestRedirectExchangesUseTheirOwnSlotsNeverTheRefreshes(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e := h.engine(func(c *tokensource.Config) { c.MaxConcurrentCalls, c.RedirectCalls = 1, 1 })
	ctx := context.Background()
	h.authorize(e, "tt01app")
	if err := h.emu.SetFaults(emulator.OpExchange, emulator.Faults{Latency: 3 * time.Second}); err != nil {
		t.Fatal(err)
	}
	slow := make(chan error, 1)
	go func() { _, err := e.ExchangeRedirectCode(ctx, randomCode()); slow <- err }()
	for h.emu.Stats().Calls[emulator.OpExchange] < 2 { // the made-up exchange reached the platform
		time.Sleep(time.Millisecond)
	}
	// The only redirect slot is taken: the next redirect is refused at once.
	if _, err := e.ExchangeRedirectCode(ctx, randomCode()); !errors.Is(err, tokensource.ErrRedirectBusy) {
		t.Fatalf("a second redirect with the only slot taken: %v", err)
	}
	// The only refresh slot is free: a refresh does not wait for the exchange.
	if _, err := e.Refresh(ctx, "tt01app"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-slow:
		t.Fatalf("the made-up exchange ended (%v) before the refresh: the refresh waited for it", err)
	default:
	}
	if err := <-slow; tokensource.KindOf(err) != tokensource.KindPlatform {
		t.Fatalf("the made-up exchange: %v", err)
	}
}

func TestRedirectAfterThePushAnswersWithoutUsingTheCodeAgain(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	a, b := h.engine(), h.engine()
	code, _ := h.emu.Authorize("tt01redir", false)
	// The AUTHORIZED push reaches instance a; the browser's redirect, with the
	// same code and no appid, reaches b (and is reloaded).
	if err := h.deliver(a, authorized("tt01redir", tokensource.Secret(code), h.clock.Now())); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		info, err := b.ExchangeCode(context.Background(), "", tokensource.Secret(code))
		if err != nil {
			t.Fatalf("redirect after the push: %v", err)
		}
		if info.AppID != "tt01redir" || info.State != tokensource.StateActive {
			t.Fatalf("info = %+v", info)
		}
	}
	if s := h.emu.Stats().App("tt01redir"); s.Exchanges != 1 {
		t.Fatalf("exchanges = %d, want 1", s.Exchanges)
	}
	if n := h.emu.Stats().Calls[emulator.OpExchange]; n != 1 {
		t.Fatalf("exchange calls = %d: the used code was sent again", n)
	}
}
