package tokensource_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

var families = []tokensource.Family{tokensource.V1, tokensource.V2}

func forEachFamily(t *testing.T, f func(t *testing.T, h *harness)) {
	for _, fam := range families {
		t.Run(string(fam), func(t *testing.T) { f(t, newHarness(t, fam)) })
	}
}

// expire moves time past the refresh point of a 2h access token.
func (h *harness) expire() { h.clock.Advance(2*time.Hour - 5*time.Minute) }

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

func TestRefreshRotatesAndStoresTheNewPair(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		e := h.engine()
		h.authorize(e, "tt01app")
		old, _ := e.Token(context.Background(), "tt01app")
		h.expire()
		tok, err := e.Token(context.Background(), "tt01app")
		if err != nil {
			t.Fatal(err)
		}
		if tok.Value == old.Value || tok.Generation <= old.Generation {
			t.Fatalf("expected a new token with a higher generation, got gen %d -> %d", old.Generation, tok.Generation)
		}
		if _, code := h.downstream(old); code == 0 {
			t.Error("the old access token still works after the rotation")
		}
		if owner, code := h.downstream(tok); owner != "tt01app" || code != 0 {
			t.Fatalf("new token: owner %q code %d", owner, code)
		}
		// A second instance starting cold reads the rotated pair from storage and
		// can refresh with it: the new refresh token was stored.
		h.expire()
		e2 := h.engine()
		tok2, err := e2.Token(context.Background(), "tt01app")
		if err != nil {
			t.Fatal(err)
		}
		if owner, code := h.downstream(tok2); owner != "tt01app" || code != 0 {
			t.Fatalf("second instance's token: owner %q code %d", owner, code)
		}
		s := h.emu.Stats().App("tt01app")
		if s.Refreshes != 2 || s.Refresh40021 != 0 {
			t.Fatalf("stats = %+v, want 2 refreshes and no 40021", s)
		}
	})
}

func TestThousandConcurrentCallsOnAColdAppidRefreshOnce(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		h.authorize(h.engine(), "tt01app")
		h.expire()
		cold := h.engine()
		var wg sync.WaitGroup
		toks := make([]tokensource.Token, 1000)
		errs := make([]error, 1000)
		for i := range toks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				toks[i], errs[i] = cold.Token(context.Background(), "tt01app")
			}()
		}
		wg.Wait()
		for i := range toks {
			if errs[i] != nil {
				t.Fatalf("call %d: %v", i, errs[i])
			}
			if toks[i].Value != toks[0].Value {
				t.Fatalf("call %d got another token", i)
			}
		}
		if s := h.emu.Stats().App("tt01app"); s.Refreshes != 1 || s.Refresh40021 != 0 {
			t.Fatalf("stats = %+v, want exactly one refresh", s)
		}
	})
}

func TestTwoInstancesRacingRefreshOnceAndTheLoserUsesTheWinnersToken(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		a, b := h.engine(), h.engine()
		h.authorize(a, "tt01app")
		if _, err := b.Token(context.Background(), "tt01app"); err != nil { // b caches the first token too
			t.Fatal(err)
		}
		h.expire()
		var wg sync.WaitGroup
		results := make([]tokensource.Token, 40)
		errs := make([]error, 40)
		for i := range results {
			e := a
			if i%2 == 1 {
				e = b
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i], errs[i] = e.Token(context.Background(), "tt01app")
			}()
		}
		wg.Wait()
		for i := range results {
			if errs[i] != nil {
				t.Fatalf("call %d: %v", i, errs[i])
			}
			if results[i].Value != results[0].Value {
				t.Fatalf("instances disagree on the token (call %d)", i)
			}
		}
		if owner, code := h.downstream(results[0]); owner != "tt01app" || code != 0 {
			t.Fatalf("shared token: owner %q code %d", owner, code)
		}
		if s := h.emu.Stats().App("tt01app"); s.Refreshes != 1 || s.Refresh40021 != 0 || s.Retrieves != 0 {
			t.Fatalf("stats = %+v, want one refresh, no 40021, no recovery", s)
		}
	})
}

func TestLostRefreshResponseRecoversWithRetrieveAndExchange(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		e := h.engine()
		h.authorize(e, "tt01app")
		h.expire()
		if err := h.emu.SetFaults(emulator.OpRefresh, emulator.Faults{DropResponse: 1}); err != nil {
			t.Fatal(err)
		}
		tok, err := e.Token(context.Background(), "tt01app")
		if err != nil {
			t.Fatal(err)
		}
		if owner, code := h.downstream(tok); owner != "tt01app" || code != 0 {
			t.Fatalf("recovered token: owner %q code %d", owner, code)
		}
		s := h.emu.Stats().App("tt01app")
		if s.Retrieves != 1 || s.Exchanges != 2 {
			t.Fatalf("stats = %+v, want one retrieve and a second exchange", s)
		}
		// The recovered chain is stored: a cold instance refreshes it without 40021.
		h.expire()
		tok2, err := h.engine().Token(context.Background(), "tt01app")
		if err != nil {
			t.Fatal(err)
		}
		if _, code := h.downstream(tok2); code != 0 {
			t.Fatalf("after recovery a refresh gave an unusable token (code %d)", code)
		}
		if after := h.emu.Stats().App("tt01app"); after.Refresh40021 != s.Refresh40021 {
			t.Fatalf("the recovered refresh token was rejected: %+v", after)
		}
	})
}

func TestAuthorizationGoneMarksUnauthorizedAndStopsCallingThePlatform(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		e := h.engine()
		h.authorize(e, "tt01app")
		if err := h.emu.Unauthorize("tt01app", false); err != nil {
			t.Fatal(err)
		}
		h.expire()
		_, err := e.Token(context.Background(), "tt01app")
		if !errors.Is(err, tokensource.ErrUnauthorized) {
			t.Fatalf("err = %v, want ErrUnauthorized", err)
		}
		calls := h.emu.Stats().Calls
		for range 50 {
			if _, err := e.Token(context.Background(), "tt01app"); !errors.Is(err, tokensource.ErrUnauthorized) {
				t.Fatalf("err = %v", err)
			}
		}
		h.clock.Advance(10 * time.Minute) // past the storage re-check: still no platform call
		if _, err := h.engine().Token(context.Background(), "tt01app"); !errors.Is(err, tokensource.ErrUnauthorized) {
			t.Fatalf("another instance: err = %v", err)
		}
		if _, err := e.Token(context.Background(), "tt01app"); !errors.Is(err, tokensource.ErrUnauthorized) {
			t.Fatalf("err = %v", err)
		}
		if after := h.emu.Stats().Calls; !equalCounts(calls, after) {
			t.Fatalf("platform calls after the authorization was gone: %v -> %v", calls, after)
		}
		// A new authorization brings it back.
		h.authorize(e, "tt01app")
		if _, err := e.Token(context.Background(), "tt01app"); err != nil {
			t.Fatalf("after re-authorization: %v", err)
		}
	})
}

func equalCounts(a, b map[string]int64) bool {
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return len(a) == len(b)
}

func TestUnauthorizePushStopsTokensAtOnce(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e := h.engine()
	h.authorize(e, "tt01app")
	if err := e.Unauthorize(context.Background(), "tt01app", h.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Token(context.Background(), "tt01app"); !errors.Is(err, tokensource.ErrUnauthorized) {
		t.Fatalf("err = %v", err)
	}
	// An older AUTHORIZED push retried after the revocation does not revive it.
	code, _ := h.emu.Authorize("tt01app", false)
	if _, err := e.ExchangeCode(context.Background(), "tt01app", tokensource.Secret(code), h.clock.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Token(context.Background(), "tt01app"); !errors.Is(err, tokensource.ErrUnauthorized) {
		t.Fatalf("a stale push revived the authorizer: %v", err)
	}
}

func TestInvalidateIsCompareAndInvalidate(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		e := h.engine()
		h.authorize(e, "tt01app")
		cur, _ := e.Token(context.Background(), "tt01app")
		stale := cur
		stale.Value = "some-older-token"
		if e.Invalidate("tt01app", stale) {
			t.Fatal("a token that is no longer current invalidated the current one")
		}
		if tok, _ := e.Token(context.Background(), "tt01app"); tok.Value != cur.Value {
			t.Fatal("the current token changed after invalidating a stale one")
		}
		if h.emu.Stats().App("tt01app").Refreshes != 0 {
			t.Fatal("invalidating a stale token caused a refresh")
		}
		// The platform silently revokes the current token: the downstream call
		// fails, the caller invalidates what it sent, and gets a working token.
		h.emu.RevokeAccessToken("tt01app", h.family)
		if _, code := h.downstream(cur); code == 0 {
			t.Fatal("emulator did not revoke the token")
		}
		if !e.Invalidate("tt01app", cur) {
			t.Fatal("invalidating the current token reported false")
		}
		if e.Invalidate("tt01app", cur) {
			t.Fatal("invalidating twice reported true twice")
		}
		fresh, err := e.Token(context.Background(), "tt01app")
		if err != nil {
			t.Fatal(err)
		}
		if owner, code := h.downstream(fresh); owner != "tt01app" || code != 0 {
			t.Fatalf("fresh token: owner %q code %d", owner, code)
		}
	})
}

func TestEncryptedRecordsAreUnreadableWithoutTheKey(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	key := []byte("0123456789abcdef0123456789abcdef")
	e := h.engine(func(c *tokensource.Config) { c.EncryptionKey = key })
	h.authorize(e, "tt01app")
	tok, _ := e.Token(context.Background(), "tt01app")

	var files []string
	_ = filepath.Walk(h.dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && strings.HasSuffix(p, ".json") {
			files = append(files, p)
		}
		return nil
	})
	if len(files) < 3 {
		t.Fatalf("expected ticket, component token and authorizer records, found %v", files)
	}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, s := range append(h.emu.IssuedSecrets(), tok.Value.Reveal()) {
			if strings.Contains(string(b), s) {
				t.Fatalf("%s holds a secret in clear", f)
			}
		}
		if strings.Contains(string(b), "refresh_token") {
			t.Fatalf("%s shows record fields in clear", f)
		}
	}
	h.expire()
	_, err := h.engine().Token(context.Background(), "tt01app")
	if err == nil || !strings.Contains(err.Error(), "encryption_key") {
		t.Fatalf("without the key: err = %v, want one naming encryption_key", err)
	}
	other := []byte("ffffffffffffffffffffffffffffffff")
	if _, err := h.engine(func(c *tokensource.Config) { c.EncryptionKey = other }).Token(context.Background(), "tt01app"); err == nil {
		t.Fatal("a wrong key read the record")
	}
	if s := h.emu.Stats().App("tt01app"); s.Refreshes != 0 || s.Refresh40021 != 0 {
		t.Fatalf("instances without the key called the platform: %+v", s)
	}
	tok2, err := h.engine(func(c *tokensource.Config) { c.EncryptionKey = key }).Token(context.Background(), "tt01app")
	if err != nil {
		t.Fatal(err)
	}
	if _, code := h.downstream(tok2); code != 0 {
		t.Fatalf("with the key: code %d", code)
	}
}

func TestUnknownAndMalformedAppids(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e := h.engine()
	_, err := e.Token(context.Background(), "tt404")
	if !errors.Is(err, tokensource.ErrUnknownAuthorizer) || !strings.Contains(err.Error(), "tt404") {
		t.Fatalf("err = %v, want ErrUnknownAuthorizer naming the appid", err)
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

func TestNoSecretInAnyLogLine(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		e := h.engine()
		h.authorize(e, "tt01app")
		h.expire()
		_ = h.emu.SetFaults(emulator.OpRefresh, emulator.Faults{DropResponse: 1})
		if _, err := e.Token(context.Background(), "tt01app"); err != nil {
			t.Fatal(err)
		}
		_ = h.emu.Unauthorize("tt01app", false)
		h.expire()
		_, _ = e.Token(context.Background(), "tt01app")
		code, _ := h.emu.Authorize("tt02app", false)
		_, _ = e.ExchangeCode(context.Background(), "", tokensource.Secret(code), time.Time{})
		_, _ = e.ExchangeCode(context.Background(), "tt02app", tokensource.Secret(code), time.Time{}) // used code
		h.assertNoSecretsLogged()
	})
}
