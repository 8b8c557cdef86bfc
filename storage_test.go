package tptoken

import (
	"context"
	"errors"
	"testing"

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
	if l.FileStorage() != nil {
		t.Fatal("a wrapped storage was reported as a FileStorage")
	}
}
