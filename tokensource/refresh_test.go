package tokensource_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

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
		if tokensource.KindOf(err) != tokensource.KindUnauthorized {
			t.Fatalf("err = %v, want KindUnauthorized", err)
		}
		calls := h.emu.Stats().Calls
		for range 50 {
			if _, err := e.Token(context.Background(), "tt01app"); tokensource.KindOf(err) != tokensource.KindUnauthorized {
				t.Fatalf("err = %v", err)
			}
		}
		h.clock.Advance(10 * time.Minute) // past the storage re-check: still no platform call
		if _, err := h.engine().Token(context.Background(), "tt01app"); tokensource.KindOf(err) != tokensource.KindUnauthorized {
			t.Fatalf("another instance: err = %v", err)
		}
		if _, err := e.Token(context.Background(), "tt01app"); tokensource.KindOf(err) != tokensource.KindUnauthorized {
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

func TestPlatformOutageServesTheCurrentTokenUntilItExpiresThen503(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e := h.engine()
	h.authorize(e, "tt01app")
	first, _ := e.Token(context.Background(), "tt01app")
	_ = h.emu.SetFaults(emulator.OpAll, emulator.Faults{Down: true})
	h.clock.Advance(2*time.Hour - 5*time.Minute) // inside refresh_ahead, not expired
	tok, err := e.Token(context.Background(), "tt01app")
	if err != nil || tok.Value != first.Value {
		t.Fatalf("during the outage the valid token must keep serving: %v", err)
	}
	h.clock.Advance(5 * time.Minute) // now expired
	_, err = e.Token(context.Background(), "tt01app")
	var te *tokensource.Error
	if !errors.As(err, &te) || te.Kind != tokensource.KindUnavailable || te.RetryAfter <= 0 {
		t.Fatalf("err = %v, want KindUnavailable with RetryAfter", err)
	}
	h.emu.ClearFaults()
	h.clock.Advance(time.Minute) // past the backoff
	tok, err = e.Token(context.Background(), "tt01app")
	if err != nil {
		t.Fatalf("after the outage: %v", err)
	}
	if _, code := h.downstream(tok); code != 0 {
		t.Fatal("token after the outage is unusable")
	}
}

// flakyStore is a FileStorage whose writes can be made to fail.
type flakyStore struct {
	*certmagic.FileStorage
	failWrites atomic.Bool
	writes     atomic.Int64
}

func (s *flakyStore) Store(ctx context.Context, key string, value []byte) error {
	s.writes.Add(1)
	if s.failWrites.Load() {
		return errors.New("disk full")
	}
	return s.FileStorage.Store(ctx, key, value)
}

func TestAFailedWriteAfterARefreshKeepsTheTokenInMemoryAndWritesItLater(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	fs := &flakyStore{FileStorage: h.store()}
	e := h.engine(func(c *tokensource.Config) { c.Store = fs })
	h.authorize(e, "tt01app")
	h.expire()
	fs.failWrites.Store(true)
	before := fs.writes.Load()
	tok, err := e.Token(context.Background(), "tt01app")
	if err != nil {
		t.Fatalf("a storage failure must not fail the caller when the refresh worked: %v", err)
	}
	if fs.writes.Load()-before < 3 {
		t.Fatalf("the write was not retried (%d attempts)", fs.writes.Load()-before)
	}
	if _, code := h.downstream(tok); code != 0 {
		t.Fatal("the in-memory token does not work")
	}
	if !loggedAtError(h, "STORING THE ROTATED TOKENS FAILED") {
		t.Fatal("the failed write was not reported at error level")
	}
	// The same token keeps serving from memory while storage fails.
	if again, err := e.Token(context.Background(), "tt01app"); err != nil || again.Value != tok.Value {
		t.Fatalf("second call: %v", err)
	}
	// Storage heals; the next renewal first writes the unsaved pair, then
	// refreshes with it: no refresh token is ever lost or reused.
	fs.failWrites.Store(false)
	h.expire()
	tok2, err := e.Token(context.Background(), "tt01app")
	if err != nil {
		t.Fatal(err)
	}
	if _, code := h.downstream(tok2); code != 0 {
		t.Fatal("token after healing does not work")
	}
	if s := h.emu.Stats().App("tt01app"); s.Refresh40021 != 0 || s.Refreshes != 2 {
		t.Fatalf("stats = %+v: want 2 clean refreshes", s)
	}
	h.expire()
	if _, err := h.engine().Token(context.Background(), "tt01app"); err != nil {
		t.Fatalf("a cold instance cannot use what was written after healing: %v", err)
	}
	if s := h.emu.Stats().App("tt01app"); s.Refresh40021 != 0 {
		t.Fatalf("stats = %+v: a stale refresh token was stored", s)
	}
}

// pausingStore holds the next Load of an authorizer record, once armed, after
// reading it and before returning it, until released: a slow storage read.
type pausingStore struct {
	*certmagic.FileStorage
	armed   atomic.Bool
	paused  chan struct{} // closed when a Load is held
	release chan struct{}
}

func (s *pausingStore) Load(ctx context.Context, key string) ([]byte, error) {
	b, err := s.FileStorage.Load(ctx, key)
	if strings.Contains(key, "/authorizers/") && s.armed.CompareAndSwap(true, false) {
		close(s.paused)
		<-s.release
	}
	return b, err
}

// A background sync of a cached record whose storage read is slow must not
// put back a token that a renewal rotated away meanwhile: the renewal's entry
// is newer than what the sync read.
func TestASlowBackgroundSyncDoesNotBringBackARotatedToken(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	ps := &pausingStore{FileStorage: h.store(), paused: make(chan struct{}), release: make(chan struct{})}
	e := h.engine(func(c *tokensource.Config) { c.Store = ps })
	ctx := context.Background()
	h.authorize(e, "tt01app")
	old, err := e.Token(ctx, "tt01app")
	if err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(time.Minute) // the record is due for a background sync; the token is fresh
	ps.armed.Store(true)
	if _, err := e.Token(ctx, "tt01app"); err != nil { // starts the sync, whose read pauses
		t.Fatal(err)
	}
	<-ps.paused
	if _, err := e.Refresh(ctx, "tt01app"); err != nil { // rotates the pair meanwhile
		t.Fatal(err)
	}
	close(ps.release)
	_ = e.Close() // waits for the sync; Token still answers from memory
	tok, err := e.Token(ctx, "tt01app")
	if err != nil {
		t.Fatal(err)
	}
	if tok.Value == old.Value {
		t.Fatalf("the rotated-away token (generation %d) is served again", tok.Generation)
	}
	if owner, code := h.downstream(tok); owner != "tt01app" || code != 0 {
		t.Fatalf("served token: owner %q, code %d", owner, code)
	}
}
