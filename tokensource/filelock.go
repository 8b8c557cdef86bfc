package tokensource

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Working around certmagic FileStorage (v0.25.x): the goroutine that keeps a lock
// file fresh is not tied to the lock it was started for. If a holder releases a
// lock and another process takes the same lock within 5 seconds, the first
// process's goroutine keeps refreshing the second holder's lock file for as long
// as the first process lives, so if the second holder crashes its lock never
// goes stale. No tptoken holder keeps a lock longer than OpTimeout, and the lock
// file's "created" time is never refreshed: a lock created longer ago than that
// is abandoned, whatever its "updated" time says, and is removed.

// lockAttempt is how long one Lock attempt waits before the engine checks for
// an abandoned lock file.
const lockAttempt = time.Second

// lockStorage takes the storage lock, breaking an abandoned FileStorage lock.
func (e *Engine) lockStorage(ctx context.Context, name string) error {
	for {
		actx, cancel := context.WithTimeout(ctx, lockAttempt)
		err := e.store.Lock(actx, name)
		attemptTimedOut := actx.Err() != nil
		cancel()
		if err == nil || ctx.Err() != nil || !attemptTimedOut {
			return err
		}
		e.breakAbandonedLock(name)
	}
}

// breakAbandonedLock removes the FileStorage lock file of name if it was created
// longer ago than any tptoken holder keeps a lock. The store may be a
// *certmagic.FileStorage or front one (a FileStorage() method).
func (e *Engine) breakAbandonedLock(name string) {
	fs, ok := e.store.(*certmagic.FileStorage)
	if f, fronts := e.store.(interface{ FileStorage() *certmagic.FileStorage }); !ok && fronts {
		fs, ok = f.FileStorage(), f.FileStorage() != nil
	}
	if !ok {
		return
	}
	file := filepath.Join(fs.Path, "locks", certmagic.StorageKeys.Safe(name)+".lock")
	b, err := os.ReadFile(file)
	if err != nil {
		return
	}
	var meta struct {
		Created time.Time `json:"created"`
	}
	if json.Unmarshal(b, &meta) != nil || meta.Created.IsZero() {
		return
	}
	if age := time.Since(meta.Created); age > e.cfg.OpTimeout+lockAttempt {
		if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
			e.log.Error("cannot remove an abandoned storage lock", e.lockField(name), zapErr(err))
			return
		}
		e.log.Error("removed an abandoned storage lock (its holder is gone but the lock was kept fresh)",
			e.lockField(name), zap.Duration("held_for", age))
	}
}
