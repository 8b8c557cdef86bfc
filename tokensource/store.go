package tokensource

import (
	"context"
	"errors"
	"io/fs"
	"time"
)

// Store is where records live and how instances coordinate. certmagic.Storage
// (and so every Caddy storage module) satisfies it. Load must return an error
// wrapping fs.ErrNotExist for a missing key.
//
// Lock is a cluster-wide named mutex: it blocks until acquired or ctx ends. The
// engine never assumes fencing: it reloads and re-checks every record after
// taking a lock, and keeps its critical sections short and bounded.
type Store interface {
	Lock(ctx context.Context, name string) error
	Unlock(ctx context.Context, name string) error
	Store(ctx context.Context, key string, value []byte) error
	Load(ctx context.Context, key string) ([]byte, error)
	Delete(ctx context.Context, key string) error
	List(ctx context.Context, path string, recursive bool) ([]string, error)
}

// LockBreaker is an optional capability of a Store whose locks can outlive
// their holder (the Caddy glue implements it for certmagic.FileStorage, whose
// lock files a goroutine of another holder may keep fresh). BreakLock removes
// the lock name if it was taken longer ago than olderThan, and reports how
// long ago (0 when it removed nothing). The engine calls it while it waits for
// a lock, with olderThan longer than any engine holds one (OpTimeout), so it
// breaks only a lock no live holder keeps.
type LockBreaker interface {
	BreakLock(ctx context.Context, name string, olderThan time.Duration) (heldFor time.Duration, err error)
}

// keys builds the storage keys and lock names of one component (TP) appid.
// Everything lives under tptoken/<component_appid>/.
type keys struct{ prefix, lockPrefix string }

func newKeys(componentAppID string) keys {
	return keys{
		prefix:     "tptoken/" + componentAppID,
		lockPrefix: "tptoken." + componentAppID,
	}
}

func (k keys) authorizerDir() string { return k.prefix + "/authorizers" }

func (k keys) authorizer(appid string) string { return k.prefix + "/authorizers/" + appid + ".json" }

func (k keys) authorizerLock(appid string) string { return k.lockPrefix + ".authorizer." + appid }

func (k keys) ticket() string { return k.prefix + "/ticket.json" }

func (k keys) codeDir() string { return k.prefix + "/codes" }

func (k keys) code(fp string) string { return k.prefix + "/codes/" + fp + ".json" }

func (k keys) componentToken(f Family) string {
	return k.prefix + "/component_token_" + string(f) + ".json"
}

func (k keys) componentTokenLock(f Family) string {
	return k.lockPrefix + ".component_token_" + string(f)
}

// isNotExist reports a missing key.
func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// forgetExpired deletes the entries under dir (the code index, the pushes
// handled, the Forget markers) that do not decode into a T or that expired
// says are done with, and returns how many it deleted.
func forgetExpired[T any](ctx context.Context, e *Engine, dir string, expired func(T) bool) int {
	list, err := e.store.List(ctx, dir, false)
	if err != nil {
		return 0
	}
	n := 0
	for _, key := range list {
		b, err := e.store.Load(ctx, key)
		if err != nil {
			continue
		}
		var d T
		if e.codec.decode(key, b, &d) != nil || expired(d) {
			if e.store.Delete(ctx, key) == nil {
				n++
			}
		}
	}
	return n
}

// appKeys are the storage key and lock of an app's token of one kind. They
// live under tptoken/@apps/: '@' is never in an appid, so they cannot meet
// the keys of a component (tptoken/<component_appid>/...), even one whose
// appid is the app's.
func appKeys(appid, kind string) (key, lock string) {
	return "tptoken/@apps/" + appid + "/" + kind + ".json", "tptoken.@apps." + appid + "." + kind
}
