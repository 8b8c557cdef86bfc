package tokensource_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

// authorized is an AUTHORIZED push of code for appid, of event time at.
func authorized(appid string, code tokensource.Secret, at time.Time) push.Message {
	return push.Message{Kind: push.Authorized, Event: "AUTHORIZED", AppID: appid, AuthorizationCode: code, EventTime: at}
}

// unauthorized is an UNAUTHORIZED push for appid, of event time at.
func unauthorized(appid string, at time.Time) push.Message {
	return push.Message{Kind: push.Unauthorized, Event: "UNAUTHORIZED", AppID: appid, EventTime: at}
}

func TestUnauthorizePushStopsTokensAtOnce(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e := h.engine()
	h.authorize(e, "tt01app")
	if err := h.deliver(e, unauthorized("tt01app", h.clock.Now())); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Token(context.Background(), "tt01app"); tokensource.KindOf(err) != tokensource.KindUnauthorized {
		t.Fatalf("err = %v", err)
	}
	// An older AUTHORIZED push retried after the revocation does not revive it.
	code, _ := h.emu.Authorize("tt01app", false)
	if err := h.deliver(e, authorized("tt01app", tokensource.Secret(code), h.clock.Now().Add(-time.Minute))); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Token(context.Background(), "tt01app"); tokensource.KindOf(err) != tokensource.KindUnauthorized {
		t.Fatalf("a stale push revived the authorizer: %v", err)
	}
}

// sealPush seals a push payload as the platform would, stamped ts.
func sealPush(t *testing.T, payload string, ts time.Time) *push.Message {
	t.Helper()
	pc, err := push.NewCrypto(testMsgToken, testAESKey, testComponent)
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
		if dup, err := a.HandlePush(ctx, m); !errors.Is(err, tokensource.ErrPushStale) || dup {
			t.Fatalf("a push stamped %s from now: dup %v, %v", off, dup, err)
		}
	}
	m := sealPush(t, `{"AppId":"tt01app","Event":"UNAUTHORIZED","EventTime":"2026-11-25 16:00:00"}`, now.Add(-9*time.Minute))
	if dup, err := a.HandlePush(ctx, m); dup || err != nil {
		t.Fatalf("a fresh push: dup %v, %v", dup, err)
	}
	for name, e := range map[string]*tokensource.Engine{"the same instance": a, "another instance": b} {
		if dup, err := e.HandlePush(ctx, m); !dup || err != nil {
			t.Fatalf("%s, second delivery: dup %v, %v", name, dup, err)
		}
	}
	// Once its stamp leaves the window, the push is stale, remembered or not.
	h.clock.Advance(2 * time.Minute)
	if _, err := b.HandlePush(ctx, m); !errors.Is(err, tokensource.ErrPushStale) {
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
			_, err := e.ExchangeCode(ctx, appid, code)
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
		if err := h.deliver(e, authorized(appid, tokensource.Secret(code), t0)); err != nil {
			t.Fatal(err)
		}
		// Revoked by a push of 10 s later, which the merchant undid 10 s after.
		h.clock.Advance(10 * time.Second)
		if err := h.deliver(e, unauthorized(appid, h.clock.Now())); err != nil || served(appid) {
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
		if err := h.deliver(e, unauthorized(appid, revokedAt)); err != nil || !served(appid) {
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
	if err := h.deliver(e, authorized("tt09app", tokensource.Secret(code), pushAt)); err != nil {
		t.Fatal(err)
	}
	if got := h.emu.Stats().Calls[emulator.OpExchange]; got != n {
		t.Fatalf("the push of an exchanged code made %d exchange calls", got-n)
	}
	if err := h.deliver(e, unauthorized("tt09app", pushAt.Add(-10*time.Second))); err != nil || !served("tt09app") {
		t.Fatalf("an UNAUTHORIZED older than the AUTHORIZED push revoked it (%v)", err)
	}
	if err := h.deliver(e, unauthorized("tt09app", pushAt.Add(time.Second))); err != nil || served("tt09app") {
		t.Fatalf("a later UNAUTHORIZED did not revoke (%v)", err)
	}
}

// A push is an operation like any other: once the engine is closed (a config
// unloaded), it is refused with an error the platform retries (another
// instance, or the next config, handles it), and nothing is written to a
// storage the engine's owner may be removing.
func TestPushToAClosedEngineIsRefusedAndWritesNothing(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e := h.engine()
	_ = e.Close()
	before := h.storedFiles()
	err := h.deliver(e, push.Message{Kind: push.Ticket, Ticket: "a-ticket-after-close", CreateTime: h.clock.Now()})
	if tokensource.KindOf(err) != tokensource.KindUnavailable {
		t.Fatalf("push to a closed engine: %v, want unavailable (retried by the platform)", err)
	}
	if after := h.storedFiles(); len(after) != len(before) {
		t.Fatalf("a closed engine wrote %d files", len(after)-len(before))
	}
	for name, body := range h.storedFiles() {
		if before[name] != body {
			t.Fatalf("a closed engine changed %s", name)
		}
	}
}
