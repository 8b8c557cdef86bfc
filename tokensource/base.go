package tokensource

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

// base is what every token source of the package runs on, whatever tokens it
// keeps: the store and the sealing of records, the clock, the log and the
// observer, the in-process single-flight and locks ahead of the storage lock
// (lock.go), the cap on platform calls in flight, retries, and the lifecycle
// of operations (begin, close). An Engine (a TP's authorizer and component
// tokens) has one; so has each app token source (appsource.go).
type base struct {
	store  Store
	codec  codec
	log    *zap.Logger
	now    func() time.Time
	obs    Observer
	sf     singleflight.Group
	local  keyedMutex
	calls  chan struct{} // semaphore for platform calls
	limits limits
	// lockName is the log field naming a storage lock (an Engine keeps
	// unconfirmed appids out of it: tags.go).
	lockName func(name string) zap.Field

	mu     sync.Mutex // guards closed
	closed bool
	wg     sync.WaitGroup // operations in flight
}

// limits are the bounds base applies, from the owner's configuration (its
// defaults are set: policy.go).
type limits struct {
	lockTimeout   time.Duration // wait for a storage lock
	opTimeout     time.Duration // one whole operation
	attempts      int           // per platform operation, for retryable failures
	retryBase     time.Duration // backoff: the first wait, doubling
	retryMax      time.Duration // backoff: the longest wait
	allowUnlocked bool          // single instance: go on when the storage lock fails
}

func newBase(store Store, cd codec, log *zap.Logger, now func() time.Time, obs Observer, maxCalls int, l limits) *base {
	return &base{store: store, codec: cd, log: log, now: now, obs: obs,
		calls: make(chan struct{}, maxCalls), limits: l, lockName: zapLock}
}

var errClosed = &Error{Kind: KindUnavailable, Msg: "token engine is shut down", RetryAfter: time.Second}

// close waits for operations in flight (each is bounded by opTimeout) and makes
// later operations fail. It never interrupts a renewal: that would lose its answer.
func (b *base) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.wg.Wait()
}

// begin registers an operation; it fails once closed.
func (b *base) begin() (context.Context, func(), error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, nil, errClosed
	}
	b.wg.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), b.limits.opTimeout)
	return ctx, func() { cancel(); b.wg.Done() }, nil
}

// spawn runs fn in a goroutine counted as an operation in flight (close
// waits for it); it reports false, running nothing, once closed.
func (b *base) spawn(fn func()) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		fn()
	}()
	return true
}

// wait runs fn once per key and waits for its token or for ctx.
func (b *base) wait(ctx context.Context, key string, fn func() (any, error)) (Token, error) {
	v, err := b.await(ctx, key, fn)
	if err != nil {
		return Token{}, err
	}
	return v.(Token), nil
}

// await runs fn once per key (single-flight) and waits for it or for ctx. fn
// keeps running when ctx ends: a refresh must not lose its answer.
func (b *base) await(ctx context.Context, key string, fn func() (any, error)) (any, error) {
	ch := b.sf.DoChan(key, fn)
	select {
	case r := <-ch:
		return r.Val, r.Err
	case <-ctx.Done():
		return nil, &Error{Kind: KindUnavailable, Msg: "gave up waiting (the operation continues)", RetryAfter: time.Second, Err: ctx.Err()}
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// call runs one platform call inside the concurrency cap. An exchange started
// by a redirect already holds a redirect slot, and takes none of these.
func (b *base) call(ctx context.Context, fn func(context.Context) error) error {
	if fromRedirect(ctx) {
		return fn(ctx)
	}
	select {
	case b.calls <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-b.calls }()
	return fn(ctx)
}

// retry runs fn up to attempts times while it fails with a retryable error
// (once for an exchange started by a redirect: its budget counts calls).
func (b *base) retry(ctx context.Context, fn func(context.Context) error) error {
	attempts := b.limits.attempts
	if fromRedirect(ctx) {
		attempts = 1
	}
	var err error
	for n := 1; n <= attempts; n++ {
		err = b.call(ctx, fn)
		if err == nil || !isRetryable(err) || n == attempts {
			return err
		}
		if serr := sleep(ctx, b.backoff(n)); serr != nil {
			return err
		}
	}
	return err
}
