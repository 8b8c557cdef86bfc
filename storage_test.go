package tptoken

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// closableStorage fails every call once closed, as a storage module whose
// connections are closed when its config is unloaded.
type closableStorage struct {
	*certmagic.FileStorage
	closed bool
	locks  int
}

var errClosedStorage = errors.New("storage closed")

func (c *closableStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if c.closed {
		return nil, errClosedStorage
	}
	return c.FileStorage.Load(ctx, key)
}

func (c *closableStorage) Lock(ctx context.Context, name string) error {
	if c.closed {
		return errClosedStorage
	}
	c.locks++
	return c.FileStorage.Lock(ctx, name)
}

func (c *closableStorage) Unlock(ctx context.Context, name string) error {
	c.locks--
	return c.FileStorage.Unlock(ctx, name)
}

func TestLiveStoreFollowsTheNewestConfigAndUnlocksWhereItLocked(t *testing.T) {
	dir := t.TempDir()
	old := &closableStorage{FileStorage: &certmagic.FileStorage{Path: dir}}
	next := &closableStorage{FileStorage: &certmagic.FileStorage{Path: dir}}
	var l liveStore
	l.add(old)
	ctx := context.Background()
	if err := l.Store(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := l.Lock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	l.add(next) // a reload: the new config's storage serves from now on
	if err := l.Unlock(ctx, "n"); err != nil || old.locks != 0 || next.locks != 0 {
		t.Fatalf("the lock was not released through the storage that took it: %v (%d, %d)", err, old.locks, next.locks)
	}
	l.remove(old)
	old.closed = true // the old config's storage module closed its connections
	if b, err := l.Load(ctx, "k"); err != nil || string(b) != "v" {
		t.Fatalf("after the reload: %q %v", b, err)
	}
	// A failed reload: the new storage goes away and the previous one serves again.
	third := &closableStorage{FileStorage: &certmagic.FileStorage{Path: dir}}
	l.add(third)
	l.remove(third)
	third.closed = true
	if _, err := l.Load(ctx, "k"); err != nil {
		t.Fatalf("after a failed reload: %v", err)
	}
	// Lock files are FileStorage's: a wrapped storage's locks are left alone.
	if err := l.Lock(ctx, "m"); err != nil {
		t.Fatal(err)
	}
	if held, err := l.BreakLock(ctx, "m", 0); held != 0 || err != nil {
		t.Fatalf("a wrapped storage's lock was broken: %s %v", held, err)
	}
	if err := l.Unlock(ctx, "m"); err != nil {
		t.Fatal(err)
	}
}

func TestLiveStoreBreaksOnlyAnAbandonedFileStorageLock(t *testing.T) {
	dir := t.TempDir()
	var l liveStore
	l.add(&certmagic.FileStorage{Path: dir})
	ctx := context.Background()
	const name = "tptoken.tt0comp.authorizer.tt01app"
	file := filepath.Join(dir, "locks", name+".lock") // where FileStorage keeps it
	// certmagic keeps "updated" fresh, even for a holder that is gone (see
	// BreakLock); "created" is when the lock was taken.
	write := func(created time.Time) {
		t.Helper()
		b, _ := json.Marshal(map[string]time.Time{"created": created, "updated": time.Now()})
		if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(time.Now().Add(-time.Second)) // taken a moment ago: its holder may be working
	if held, err := l.BreakLock(ctx, name, time.Minute); held != 0 || err != nil {
		t.Fatalf("a live lock was broken: %s %v", held, err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("a live lock file is gone: %v", err)
	}
	write(time.Now().Add(-2 * time.Minute)) // taken longer ago than any holder keeps one
	if held, err := l.BreakLock(ctx, name, time.Minute); held < 2*time.Minute || err != nil {
		t.Fatalf("an abandoned lock was not broken: %s %v", held, err)
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := l.Lock(lctx, name); err != nil {
		t.Fatalf("the broken lock cannot be taken: %v", err)
	}
	_ = l.Unlock(ctx, name)
}
