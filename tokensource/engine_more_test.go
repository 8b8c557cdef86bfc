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

func loggedAtError(h *harness, substr string) bool {
	for _, e := range h.logs.All() {
		if e.Level >= 2 /* error */ && strings.Contains(e.Message, substr) {
			return true
		}
	}
	return false
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
			if _, err := e.ExchangeCode(context.Background(), "tt01app", tokensource.Secret(code), h.clock.Now()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if s := h.emu.Stats().App("tt01app"); s.Exchanges != 1 {
		t.Fatalf("exchanges = %d, want 1", s.Exchanges)
	}
}

func TestNoTicketIsAClearError(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	client, _ := tokensource.NewClient(tokensource.ClientConfig{Endpoint: h.srv.URL, ComponentAppID: testComponent, ComponentSecret: testSecret})
	e, err := tokensource.New(tokensource.Config{ComponentAppID: testComponent, Client: client, Store: h.store(), Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	_, err = e.ComponentToken(context.Background())
	if !errors.Is(err, tokensource.ErrNoTicket) || !strings.Contains(err.Error(), "tptoken_events") {
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

func logged(h *harness, substr string) bool {
	for _, e := range h.logs.All() {
		if strings.Contains(e.Message, substr) {
			return true
		}
	}
	return false
}

func mustComponent(t *testing.T, e *tokensource.Engine) tokensource.Token {
	t.Helper()
	tok, err := e.ComponentToken(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return tok
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

func TestRedirectAfterThePushAnswersWithoutUsingTheCodeAgain(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	a, b := h.engine(), h.engine()
	code, _ := h.emu.Authorize("tt01redir", false)
	// The AUTHORIZED push reaches instance a; the browser's redirect, with the
	// same code and no appid, reaches b (and is reloaded).
	if _, err := a.ExchangeCode(context.Background(), "tt01redir", tokensource.Secret(code), h.clock.Now()); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		info, err := b.ExchangeCode(context.Background(), "", tokensource.Secret(code), time.Time{})
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
