package tokensource_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// Tests of what input from the internet can make the engine do: exchanges
// started by the authorization redirect, and pushes replayed or stamped long ago.

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
	if _, err := e.ExchangeCode(ctx, "tt02app", tokensource.Secret(code), h.clock.Now()); err != nil {
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
	if _, err := e.ExchangeCode(ctx, "tt01app", tokensource.Secret(code), h.clock.Now()); err != nil { // the push
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

// sealPush seals a push payload as the platform would, stamped ts.
func sealPush(t *testing.T, payload string, ts time.Time) *tokensource.PushMessage {
	t.Helper()
	pc, err := tokensource.NewPushCrypto(testMsgToken, testAESKey, testComponent)
	if err != nil {
		t.Fatal(err)
	}
	body, err := pc.Seal([]byte(payload), strconv.FormatInt(ts.Unix(), 10), "7731")
	if err != nil {
		t.Fatal(err)
	}
	m, err := pc.Open(body)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPushesOutsideTheWindowAreStaleAndHandledPushesAreRememberedByEveryInstance(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	a, b := h.engine(), h.engine() // two instances on one storage
	ctx := context.Background()
	now := h.clock.Now()
	for _, off := range []time.Duration{-11 * time.Minute, 11 * time.Minute, -6 * 365 * 24 * time.Hour} {
		m := sealPush(t, `{"Ticket":"t1","MsgType":"Ticket","Event":"PUSH"}`, now.Add(off))
		if dup, err := a.AdmitPush(ctx, m); !errors.Is(err, tokensource.ErrPushStale) || dup {
			t.Fatalf("a push stamped %s from now: dup %v, %v", off, dup, err)
		}
	}
	m := sealPush(t, `{"AppId":"tt01app","Event":"UNAUTHORIZED","EventTime":"2026-11-25 16:00:00"}`, now.Add(-9*time.Minute))
	if dup, err := a.AdmitPush(ctx, m); dup || err != nil {
		t.Fatalf("a fresh push: dup %v, %v", dup, err)
	}
	a.PushHandled(ctx, m)
	for name, e := range map[string]*tokensource.Engine{"the same instance": a, "another instance": b} {
		if dup, err := e.AdmitPush(ctx, m); !dup || err != nil {
			t.Fatalf("%s, second delivery: dup %v, %v", name, dup, err)
		}
	}
	// Once its stamp leaves the window, the push is stale, remembered or not.
	h.clock.Advance(2 * time.Minute)
	if _, err := b.AdmitPush(ctx, m); !errors.Is(err, tokensource.ErrPushStale) {
		t.Fatalf("the handled push after its window: %v", err)
	}
}

func TestEveryLocalAuthorizationOrdersLaterPushes(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e := h.engine()
	ctx := context.Background()
	served := func(appid string) bool {
		tok, err := e.Token(ctx, appid)
		return err == nil && tok.Value != ""
	}
	t0 := h.clock.Now()
	reauth := map[string]func(appid string, code tokensource.Secret) error{
		"operator code": func(appid string, code tokensource.Secret) error {
			_, err := e.ExchangeCode(ctx, appid, code, time.Time{})
			return err
		},
		"redirect": func(_ string, code tokensource.Secret) error {
			_, err := e.ExchangeRedirectCode(ctx, code)
			return err
		},
		"recovery": func(appid string, _ tokensource.Secret) error {
			_, err := e.Recover(ctx, appid, false)
			return err
		},
		"import": func(appid string, code tokensource.Secret) error {
			// A legacy system exchanged the code; its refresh token is imported.
			ct, err := e.ComponentToken(ctx)
			if err != nil {
				return err
			}
			client, err := tokensource.NewClient(tokensource.ClientConfig{Endpoint: h.srv.URL, ComponentAppID: testComponent, ComponentSecret: testSecret})
			if err != nil {
				return err
			}
			g, err := client.ExchangeCode(ctx, ct.Value, code)
			if err != nil {
				return err
			}
			if r := e.Import(ctx, appid, g.RefreshToken, time.Time{}); r.Result != "imported" {
				return errors.New(r.Result + ": " + r.Detail)
			}
			return nil
		},
	}
	i := 0
	for name, do := range reauth {
		i++
		appid := "tt0" + strconv.Itoa(i) + "app"
		code, _ := h.emu.Authorize(appid, false)
		if _, err := e.ExchangeCode(ctx, appid, tokensource.Secret(code), t0); err != nil {
			t.Fatal(err)
		}
		// Revoked by a push of 10 s later, which the merchant undid 10 s after.
		h.clock.Advance(10 * time.Second)
		if err := e.Unauthorize(ctx, appid, h.clock.Now()); err != nil || served(appid) {
			t.Fatalf("%s: the revocation: %v", name, err)
		}
		revokedAt := h.clock.Now()
		h.clock.Advance(10 * time.Second)
		code, _ = h.emu.Authorize(appid, false)
		if err := do(appid, tokensource.Secret(code)); err != nil || !served(appid) {
			t.Fatalf("%s: re-authorization: %v", name, err)
		}
		// The platform delivers the old revocation again (a late retry): it is
		// older than the re-authorization, and must not revoke it.
		if err := e.Unauthorize(ctx, appid, revokedAt); err != nil || !served(appid) {
			t.Fatalf("%s: an UNAUTHORIZED older than the re-authorization revoked it (%v)", name, err)
		}
		t0 = h.clock.Now()
	}

	// The push of a code the redirect exchanged first carries a later event
	// time: it counts, though no exchange is made.
	code, _ := h.emu.Authorize("tt09app", false)
	if _, err := e.ExchangeRedirectCode(ctx, tokensource.Secret(code)); err != nil {
		t.Fatal(err)
	}
	n := h.emu.Stats().Calls[emulator.OpExchange]
	pushAt := h.clock.Now().Add(30 * time.Second) // the platform's clock is ahead
	if _, err := e.ExchangeCode(ctx, "tt09app", tokensource.Secret(code), pushAt); err != nil {
		t.Fatal(err)
	}
	if got := h.emu.Stats().Calls[emulator.OpExchange]; got != n {
		t.Fatalf("the push of an exchanged code made %d exchange calls", got-n)
	}
	if err := e.Unauthorize(ctx, "tt09app", pushAt.Add(-10*time.Second)); err != nil || !served("tt09app") {
		t.Fatalf("an UNAUTHORIZED older than the AUTHORIZED push revoked it (%v)", err)
	}
	if err := e.Unauthorize(ctx, "tt09app", pushAt.Add(time.Second)); err != nil || served("tt09app") {
		t.Fatalf("a later UNAUTHORIZED did not revoke (%v)", err)
	}
}
