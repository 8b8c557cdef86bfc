package tokensource_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// stuckLockStore is a FileStorage whose authorizer locks are held by a holder
// that is gone, until the engine asks it to break them (LockBreaker).
type stuckLockStore struct {
	*certmagic.FileStorage
	mu         sync.Mutex
	stuck      bool
	olderThans []time.Duration
}

func (s *stuckLockStore) Lock(ctx context.Context, name string) error {
	s.mu.Lock()
	stuck := s.stuck && strings.Contains(name, ".authorizer.")
	s.mu.Unlock()
	if stuck {
		<-ctx.Done()
		return ctx.Err()
	}
	return s.FileStorage.Lock(ctx, name)
}

func (s *stuckLockStore) BreakLock(_ context.Context, _ string, olderThan time.Duration) (time.Duration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.olderThans = append(s.olderThans, olderThan)
	if !s.stuck {
		return 0, nil
	}
	s.stuck = false
	return 42 * time.Minute, nil
}

var _ tokensource.LockBreaker = (*stuckLockStore)(nil)

func TestAnAbandonedLockIsBrokenThroughTheStore(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	st := &stuckLockStore{FileStorage: h.store()}
	e := h.engine(func(c *tokensource.Config) { c.Store = st })
	h.authorize(e, "tt01app")
	h.expire()
	st.mu.Lock()
	st.stuck = true
	st.mu.Unlock()
	tok, err := e.Token(context.Background(), "tt01app")
	if err != nil {
		t.Fatalf("the refresh waited for a lock no one holds: %v", err)
	}
	if _, code := h.downstream(tok); code != 0 || h.emu.Stats().App("tt01app").Refreshes != 1 {
		t.Fatal("the token was not renewed under the broken lock")
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	// The harness's OpTimeout is 20 s (LockTimeout) + 3 × 5 s + 5 s: no holder
	// keeps a lock longer, plus one attempt of 1 s.
	if len(st.olderThans) != 1 || st.olderThans[0] != 41*time.Second {
		t.Fatalf("BreakLock calls with olderThan %v, want one with 41s", st.olderThans)
	}
	if !loggedAtError(h, "removed an abandoned storage lock") {
		t.Fatal("the broken lock was not reported")
	}
}
