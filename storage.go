package tptoken

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// liveStore is the Store a pooled engine uses: the storage of the newest loaded
// config that shares the engine. The engine outlives configs, but a storage
// module may close its connections when its config is unloaded, so the engine
// must never keep using an old config's storage object. A lock is released
// through the storage object that took it.
type liveStore struct {
	mu    sync.Mutex
	stack []certmagic.Storage // the storages of the configs using the engine, oldest first
	cur   atomic.Pointer[storageRef]
	held  sync.Map // lock name → certmagic.Storage that holds it
}

type storageRef struct{ certmagic.Storage }

// add makes s (a newly provisioned config's storage) the current one.
func (l *liveStore) add(s certmagic.Storage) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stack = append(l.stack, s)
	l.cur.Store(&storageRef{s})
}

// remove forgets an unloaded config's storage; the newest remaining one is current.
func (l *liveStore) remove(s certmagic.Storage) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.stack) - 1; i >= 0; i-- {
		if l.stack[i] == s {
			l.stack = append(l.stack[:i], l.stack[i+1:]...)
			break
		}
	}
	if n := len(l.stack); n > 0 {
		l.cur.Store(&storageRef{l.stack[n-1]})
	}
}

func (l *liveStore) current() certmagic.Storage { return l.cur.Load().Storage }

func (l *liveStore) Store(ctx context.Context, key string, value []byte) error {
	return l.current().Store(ctx, key, value)
}

func (l *liveStore) Load(ctx context.Context, key string) ([]byte, error) {
	return l.current().Load(ctx, key)
}

func (l *liveStore) Delete(ctx context.Context, key string) error {
	return l.current().Delete(ctx, key)
}

func (l *liveStore) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	return l.current().List(ctx, path, recursive)
}

func (l *liveStore) Lock(ctx context.Context, name string) error {
	s := l.current()
	if err := s.Lock(ctx, name); err != nil {
		return err
	}
	l.held.Store(name, s)
	return nil
}

func (l *liveStore) Unlock(ctx context.Context, name string) error {
	s := l.current()
	if v, ok := l.held.LoadAndDelete(name); ok {
		s = v.(certmagic.Storage)
	}
	return s.Unlock(ctx, name)
}

// BreakLock implements tokensource.LockBreaker for certmagic.FileStorage
// (v0.25.x), whose goroutine that keeps a lock file fresh is not tied to the
// lock it was started for: if a holder releases a lock and another process
// takes the same lock within 5 seconds, the first process's goroutine keeps
// refreshing the second holder's lock file for as long as the first process
// lives, so if the second holder crashes its lock never goes stale. The lock
// file's "created" time is never refreshed, so a lock created longer ago than
// olderThan (longer than any engine holds a lock) is abandoned, whatever its
// "updated" time says, and is removed. Other storages expire their own locks:
// nothing to do.
func (l *liveStore) BreakLock(_ context.Context, name string, olderThan time.Duration) (time.Duration, error) {
	fs, ok := l.current().(*certmagic.FileStorage)
	if !ok {
		return 0, nil
	}
	file := filepath.Join(fs.Path, "locks", certmagic.StorageKeys.Safe(name)+".lock")
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, nil
	}
	var meta struct {
		Created time.Time `json:"created"`
	}
	if json.Unmarshal(b, &meta) != nil || meta.Created.IsZero() {
		return 0, nil
	}
	age := time.Since(meta.Created)
	if age <= olderThan {
		return 0, nil
	}
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	return age, nil
}

var _ tokensource.LockBreaker = (*liveStore)(nil)
