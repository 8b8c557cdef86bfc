package tokensource

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// keyedMutex serializes work on one name inside this engine, ahead of the storage
// lock: callers of one process then queue on a channel instead of polling the
// storage lock (FileStorage polls once a second).
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	ch   chan struct{}
	refs int
}

// lock waits for name until ctx ends. The returned func releases it.
func (k *keyedMutex) lock(ctx context.Context, name string) (func(), error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[string]*keyedEntry)
	}
	e := k.m[name]
	if e == nil {
		e = &keyedEntry{ch: make(chan struct{}, 1)}
		k.m[name] = e
	}
	e.refs++
	k.mu.Unlock()

	select {
	case e.ch <- struct{}{}:
		return func() { <-e.ch; k.drop(name, e) }, nil
	case <-ctx.Done():
		k.drop(name, e)
		return nil, ctx.Err()
	}
}

func (k *keyedMutex) drop(name string, e *keyedEntry) {
	k.mu.Lock()
	e.refs--
	if e.refs == 0 {
		delete(k.m, name)
	}
	k.mu.Unlock()
}

// errLockTimeout means another holder kept the lock longer than LockTimeout.
var errLockTimeout = errors.New("timed out waiting for the storage lock (another instance holds it)")

// acquire takes the in-process lock, then the storage lock, each bounded by
// LockTimeout. release never fails the caller; a failed Unlock is logged (the
// storage expires stale locks: FileStorage after 10 s).
//
// In single-instance mode (AllowUnlocked), a storage lock that fails for a
// reason other than contention is skipped: the in-process lock alone then
// guarantees one refresh at a time, which holds only if no other instance shares
// the storage.
func (b *base) acquire(ctx context.Context, name string) (release func(), err error) {
	lctx, cancel := context.WithTimeout(ctx, b.limits.lockTimeout)
	defer cancel()
	unlocal, err := b.local.lock(lctx, name)
	if err != nil {
		return nil, errLockTimeout
	}
	err = b.lockStorage(lctx, name)
	if err != nil {
		timedOut := lctx.Err() != nil
		if timedOut {
			unlocal()
			return nil, errLockTimeout
		}
		if !b.limits.allowUnlocked {
			unlocal()
			return nil, err
		}
		b.log.Error("storage lock failed; continuing with the in-process lock only (single-instance mode)",
			b.lockName(name), zapErr(err))
		return unlocal, nil
	}
	return func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := b.store.Unlock(uctx, name); err != nil {
			b.log.Error("releasing storage lock failed; it expires when stale", b.lockName(name), zapErr(err))
		}
		unlocal()
	}, nil
}

// lockStorage takes the storage lock. With a store that can tell an
// abandoned lock (LockBreaker), the wait is cut into attempts of lockAttempt,
// and after each the store is asked to break the lock if it was taken longer
// ago than any engine holds one.
func (b *base) lockStorage(ctx context.Context, name string) error {
	lb, breaks := b.store.(LockBreaker)
	if !breaks {
		return b.store.Lock(ctx, name)
	}
	for {
		actx, cancel := context.WithTimeout(ctx, lockAttempt)
		err := b.store.Lock(actx, name)
		attemptTimedOut := actx.Err() != nil
		cancel()
		if err == nil || ctx.Err() != nil || !attemptTimedOut {
			return err
		}
		heldFor, err := lb.BreakLock(ctx, name, b.abandonedAfter())
		switch {
		case err != nil:
			b.log.Error("cannot remove an abandoned storage lock", b.lockName(name), zapErr(err))
		case heldFor > 0:
			b.log.Error("removed an abandoned storage lock (its holder is gone but the lock was kept fresh)",
				b.lockName(name), zap.Duration("held_for", heldFor))
		}
	}
}

// locked runs fn once per key+appid at a time (single-flight), as an engine
// operation holding the authorizer's storage lock, with its stored record (nil
// when there is none). what says, in errors, what the lock was needed for.
func (e *Engine) locked(ctx context.Context, key, appid, what string, fn func(ctx context.Context, s *slot, prev *record) (any, error)) (any, error) {
	return e.lockedRead(ctx, key, appid, what, func(octx context.Context, s *slot, prev *record, readErr error) (any, error) {
		if readErr != nil {
			return nil, &Error{Kind: KindUnavailable, AppID: appid, Msg: "cannot read the authorizer record from storage", RetryAfter: 5 * time.Second, Err: readErr}
		}
		return fn(octx, s, prev)
	})
}

// lockedRead is locked for an operation that decides what an unreadable
// record means (rebuild): fn gets the read error (nil for a missing record).
func (e *Engine) lockedRead(ctx context.Context, key, appid, what string, fn func(ctx context.Context, s *slot, prev *record, readErr error) (any, error)) (any, error) {
	return e.await(ctx, key+appid, func() (any, error) {
		octx, done, err := e.begin()
		if err != nil {
			return nil, err
		}
		defer done()
		release, err := e.acquire(octx, e.keys.authorizerLock(appid))
		if err != nil {
			return nil, &Error{Kind: KindUnavailable, AppID: appid, Msg: "cannot take the storage lock to " + what, RetryAfter: 2 * time.Second, Err: err}
		}
		defer release()
		prev, err := e.loadRecord(octx, appid)
		if isNotExist(err) {
			err = nil
		}
		return fn(octx, e.slotFor(appid), prev, err)
	})
}
