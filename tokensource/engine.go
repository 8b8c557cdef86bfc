// Package tokensource is the token engine of tptoken: it gives any caller a valid
// authorizer_access_token (or component_access_token) of the Douyin / ByteDance
// open platform for an authorizer appid, exchanging codes and refreshing on demand.
//
// Its invariant: a refresh token is used at most once. The platform's refresh
// token is single-use and rotated, and a second concurrent refresh loses the
// authorizer, so every use of a refresh token happens under an in-process
// single-flight AND the storage lock, after reloading the stored record, and the
// rotated pair is stored before the lock is released or the new token is used.
//
// The package knows nothing of Caddy: it takes a Store (certmagic.Storage
// satisfies it), an HTTP client, a clock and a zap logger.
package tokensource

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	gocache "github.com/patrickmn/go-cache"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
)

// Source is what a request handler needs: a token for an appid, and a way to
// report that a token it sent was rejected.
type Source interface {
	Token(ctx context.Context, appid string) (Token, error)
	Invalidate(appid string, sent Token) bool
}

// Token is an access token ready to be sent, with what is needed to send it.
type Token struct {
	Value      Secret
	AppID      string // authorizer appid; "" for a component token
	Family     Family
	Expiry     time.Time
	Generation uint64
}

// Config configures an Engine.
type Config struct {
	ComponentAppID string
	Client         *Client // the platform client of the engine's family
	Store          Store
	EncryptionKey  []byte // optional: 32 bytes, records sealed with AES-256-GCM
	// PreviousEncryptionKeys are earlier encryption keys: records sealed with
	// them are still read, and sealed with EncryptionKey when next written
	// (Reseal rewrites them all). Key rotation.
	PreviousEncryptionKeys [][]byte
	Logger                 *zap.Logger
	Now                    func() time.Time
	Observer               Observer // metrics hooks; optional

	// RefreshAhead: refresh an access token this long before it expires (capped at
	// half its lifetime). Default 10m.
	RefreshAhead time.Duration
	// RefreshTokenMargin: renew a refresh token this long before it expires, even
	// for an idle authorizer. Default 72h.
	RefreshTokenMargin time.Duration
	// LockTimeout bounds the wait for the storage lock. Default 15s (FileStorage
	// declares a crashed holder's lock stale after 10s).
	LockTimeout time.Duration
	// OpTimeout bounds one whole operation (lock wait, refresh with retries,
	// store), and so how long any holder keeps a lock. Default: LockTimeout +
	// Attempts × the client's call timeout + 5s (50s with the defaults).
	OpTimeout time.Duration
	// Attempts per platform operation for retryable failures. Default 3.
	Attempts int
	// RetryBase and RetryMax bound the backoff between attempts and, after an
	// operation failed, before the next one for the same authorizer. Defaults 500ms and 30s.
	RetryBase, RetryMax time.Duration
	// AllowUnlocked lets a refresh proceed with the in-process lock only when the
	// storage lock fails (not when it is merely held). Only for a single instance.
	AllowUnlocked bool
	// SyncInterval: a cached record older than this is reloaded from storage in
	// the background on its next use, so pushes handled by other instances are
	// seen. Default 30s.
	SyncInterval time.Duration
	// MaxConcurrentCalls caps platform calls in flight. Default 16.
	MaxConcurrentCalls int
	// RedirectCalls caps the platform calls in flight for exchanges started by
	// the authorization redirect (input from anyone), on slots of their own:
	// they never take one of MaxConcurrentCalls. Default 4.
	RedirectCalls int
	// RedirectExchanges per RedirectWindow bound the exchanges redirects start
	// (a token bucket of RedirectExchanges). Defaults 300 and 1h. Negative: a
	// redirect never starts an exchange (codes come from pushes only).
	RedirectExchanges int
	RedirectWindow    time.Duration
	// PushWindow: a push stamped (TimeStamp) further than this from the clock
	// is refused, and a push already handled is remembered this long. Default 10m.
	PushWindow time.Duration

	// Background work (Run).
	MaintainInterval  time.Duration // how often cached authorizers are checked; default 15s
	SweepInterval     time.Duration // how often every record in storage is checked; default 10m
	ActiveWindow      time.Duration // authorizers used within this are refreshed ahead; default 1h
	RenewRate         float64       // background renewals per second; default 2
	BackgroundWorkers int           // background renewals in flight; default 2
}

func (c *Config) setDefaults() error {
	if !ValidAppID(c.ComponentAppID) {
		return fmt.Errorf("component_appid %q: want 1-64 letters, digits, '_' or '-'", c.ComponentAppID)
	}
	if c.Client == nil {
		return errors.New("tokensource: Config.Client is required")
	}
	if c.Store == nil {
		return errors.New("tokensource: Config.Store is required")
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.RefreshAhead, 10*time.Minute)
	def(&c.RefreshTokenMargin, 72*time.Hour)
	def(&c.LockTimeout, 15*time.Second)
	def(&c.RetryBase, 500*time.Millisecond)
	def(&c.RetryMax, 30*time.Second)
	def(&c.SyncInterval, 30*time.Second)
	if c.Attempts <= 0 {
		c.Attempts = 3
	}
	if c.MaxConcurrentCalls <= 0 {
		c.MaxConcurrentCalls = 16
	}
	if c.RedirectCalls <= 0 {
		c.RedirectCalls = 4
	}
	if c.RedirectExchanges == 0 {
		c.RedirectExchanges = 300
	}
	def(&c.RedirectWindow, time.Hour)
	def(&c.PushWindow, 10*time.Minute)
	def(&c.OpTimeout, c.LockTimeout+time.Duration(c.Attempts)*c.Client.timeout+5*time.Second)
	def(&c.MaintainInterval, 15*time.Second)
	def(&c.SweepInterval, 10*time.Minute)
	def(&c.ActiveWindow, time.Hour)
	if c.RenewRate <= 0 {
		c.RenewRate = 2
	}
	if c.BackgroundWorkers <= 0 {
		c.BackgroundWorkers = 2
	}
	return nil
}

// Engine hands out tokens for the authorizers of one component (TP) appid and one
// token family. Several engines (instances) may share one Store.
type Engine struct {
	cfg    Config
	family Family
	client *Client
	store  Store
	keys   keys
	codec  codec
	log    *zap.Logger
	now    func() time.Time
	obs    Observer

	slots *gocache.Cache // appid -> *slot
	comp  slot           // the component token
	sf    singleflight.Group
	local keyedMutex
	calls chan struct{} // semaphore for platform calls

	redirect redirectGate          // exchanges started by the authorization redirect
	pushes   *recentSet[time.Time] // pushes handled recently (replay memory)

	ticket  atomic.Pointer[diskTicket]
	summary atomic.Pointer[Summary]
	tags    sync.Map      // appid -> *opTag: operations reported apart (tags.go)
	newApps *rate.Limiter // forced recoveries of appids with no record (operator.go)

	mu     sync.Mutex // guards closed
	closed bool
	wg     sync.WaitGroup // operations in flight
	done   chan struct{}
}

// New builds an Engine. It makes no I/O and starts no goroutine.
func New(cfg Config) (*Engine, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	cd, err := newCodec(cfg.EncryptionKey, cfg.PreviousEncryptionKeys)
	if err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:     cfg,
		family:  cfg.Client.Family(),
		client:  cfg.Client,
		store:   cfg.Store,
		keys:    newKeys(cfg.ComponentAppID),
		codec:   cd,
		log:     cfg.Logger,
		now:     cfg.Now,
		obs:     cfg.Observer,
		slots:   gocache.New(gocache.NoExpiration, 0), // no janitor goroutine: idle slots are swept by the engine
		calls:   make(chan struct{}, cfg.MaxConcurrentCalls),
		pushes:  newRecentSet[time.Time](pushesKept),
		done:    make(chan struct{}),
		newApps: rate.NewLimiter(rate.Every(newAppRecoveryEvery), newAppRecoveryBurst),
	}
	e.redirect = newRedirectGate(&e.cfg)
	return e, nil
}

// ComponentAppID is the TP appid the engine serves.
func (e *Engine) ComponentAppID() string { return e.cfg.ComponentAppID }

// Family is the token family the engine serves.
func (e *Engine) Family() Family { return e.family }

// Close waits for operations in flight (each is bounded by OpTimeout) and makes
// later operations fail. It never interrupts a refresh: that would lose its answer.
func (e *Engine) Close() error {
	e.mu.Lock()
	if !e.closed {
		e.closed = true
		close(e.done)
	}
	e.mu.Unlock()
	e.wg.Wait()
	return nil
}

var errClosed = &Error{Kind: KindUnavailable, Msg: "token engine is shut down", RetryAfter: time.Second}

// begin registers an operation; it fails once the engine is closed.
func (e *Engine) begin() (context.Context, func(), error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, nil, errClosed
	}
	e.wg.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.OpTimeout)
	return ctx, func() { cancel(); e.wg.Done() }, nil
}

// slot is the in-memory state of one authorizer (or of the component token).
// The entry is an immutable snapshot swapped atomically; used and syncing live
// across snapshots.
type slot struct {
	cur     atomic.Pointer[entry]
	used    atomic.Int64 // unix seconds of the last Token call
	syncing atomic.Bool
	rej     atomic.Pointer[rejections] // made on the first downstream rejection (reject.go)
}

// entry is a snapshot of what this instance knows of a record.
type entry struct {
	rec        *Record // nil when missing
	tok        Token
	refreshAt  time.Time // refresh from here on
	unusableAt time.Time // never send the token from here on
	suspect    Secret    // a token reported rejected: not fresh (reject.go decides whether it is renewed)
	confirmed  bool      // the platform's own token API rejected suspect: it is not usable either
	checkedAt  time.Time // when storage last confirmed rec
	retryAt    time.Time // no platform attempt before this (backoff)
	failures   int
	lastErr    error // why the last attempt failed
	dirty      bool  // rec is newer than what storage holds (a write failed)
}

// margins computes when a token should be refreshed and when it must no longer
// be sent. The refresh point is RefreshAhead before expiry, but at most half the
// lifetime; tokens are not sent in the last tenth of their life (at most 30s), so
// a request in flight never carries an expired token.
func margins(issued, expiry time.Time, ahead time.Duration) (refreshAt, unusableAt time.Time) {
	life := expiry.Sub(issued)
	if life <= 0 {
		return expiry, expiry
	}
	skew := min(30*time.Second, life/10)
	ahead = min(ahead, life/2)
	return expiry.Add(-ahead), expiry.Add(-skew)
}

func (e *Engine) newEntry(rec *Record, now time.Time) *entry {
	en := &entry{rec: rec, checkedAt: now}
	if rec != nil && rec.State == StateActive && rec.AccessToken != "" {
		en.refreshAt, en.unusableAt = margins(rec.AccessIssued, rec.AccessExpiry, e.cfg.RefreshAhead)
		en.tok = Token{Value: rec.AccessToken, AppID: rec.AppID, Family: rec.Family, Expiry: rec.AccessExpiry, Generation: rec.Generation}
	}
	return en
}

// usable: the token may be sent now. A token only reported rejected by a
// downstream answer may well be valid: it stays usable until it expires.
func (en *entry) usable(now time.Time) bool {
	return en != nil && en.tok.Value != "" && !(en.confirmed && en.tok.Value == en.suspect) && now.Before(en.unusableAt)
}

// fresh: the token may be sent and needs no refresh (nor a check after a
// reported rejection) yet. It is the hot path of every request.
func (en *entry) fresh(now time.Time) bool {
	return en != nil && en.tok.Value != "" && en.tok.Value != en.suspect && now.Before(en.unusableAt) && now.Before(en.refreshAt)
}

func (e *Engine) slotFor(appid string) *slot {
	if v, ok := e.slots.Get(appid); ok {
		return v.(*slot)
	}
	s := &slot{}
	if err := e.slots.Add(appid, s, gocache.NoExpiration); err != nil {
		v, _ := e.slots.Get(appid) // lost a race: use the winner's slot
		return v.(*slot)
	}
	return s
}

// Token returns a valid access token for the authorizer appid. The hot path is a
// cache read; a miss, an expiring token or an invalidated token goes through
// the single-flight refresh path. Callers that give up (ctx) do not cancel the
// refresh: its answer must be stored.
func (e *Engine) Token(ctx context.Context, appid string) (Token, error) {
	if !ValidAppID(appid) {
		return Token{}, CheckAppID(appid)
	}
	now := e.now()
	if v, ok := e.slots.Get(appid); ok {
		s := v.(*slot)
		en := s.cur.Load()
		if en.fresh(now) {
			s.touch(now)
			if now.Sub(en.checkedAt) > e.cfg.SyncInterval {
				e.syncInBackground(appid, s)
			}
			e.obs.Lookup(appid, "hit")
			return en.tok, nil
		}
		if err := e.settledError(appid, en, now); err != nil {
			e.obs.Lookup(appid, "error")
			return Token{}, err
		}
		s.touch(now)
	}
	tok, err := e.wait(ctx, appid, func() (any, error) { return e.obtain(appid, onDemand) })
	if err != nil {
		e.obs.Lookup(appid, "error")
	} else {
		e.obs.Lookup(appid, "obtained")
	}
	return tok, err
}

func (s *slot) touch(now time.Time) {
	if sec := now.Unix(); s.used.Load() != sec {
		s.used.Store(sec)
	}
}

// settledError answers without I/O for authorizers whose state is known bad and
// recently confirmed: unauthorized, unknown, or the other family.
func (e *Engine) settledError(appid string, en *entry, now time.Time) error {
	if en == nil {
		return nil
	}
	recheck := 30 * time.Second
	if en.rec == nil {
		recheck = 5 * time.Second
	}
	if now.Sub(en.checkedAt) > recheck {
		return nil
	}
	return e.stateError(appid, en)
}

// stateError is the error for a record that cannot give tokens, or nil.
func (e *Engine) stateError(appid string, en *entry) error {
	switch {
	case en.rec == nil:
		return &Error{Kind: KindUnknownAuthorizer, AppID: appid,
			Msg: "no authorization on record for this appid: have it authorize the TP (the AUTHORIZED push reaches tptoken_events) or seed a code through the admin API"}
	case en.rec.Family != e.family:
		return &Error{Kind: KindFamilyMismatch, AppID: appid,
			Msg: fmt.Sprintf("authorized under api %s but this instance uses api %s; tokens of the two families must not be mixed: seed a new code to move it", en.rec.Family, e.family)}
	case en.rec.State == StateUnauthorized:
		return &Error{Kind: KindUnauthorized, AppID: appid,
			Msg: "the authorization is gone (unauthorized or revoked): the mini-app must authorize the TP again"}
	}
	return nil
}

// wait runs fn once per key and waits for its token or for ctx.
func (e *Engine) wait(ctx context.Context, key string, fn func() (any, error)) (Token, error) {
	v, err := e.await(ctx, key, fn)
	if err != nil {
		return Token{}, err
	}
	return v.(Token), nil
}

// await runs fn once per key (single-flight) and waits for it or for ctx. fn
// keeps running when ctx ends: a refresh must not lose its answer.
func (e *Engine) await(ctx context.Context, key string, fn func() (any, error)) (any, error) {
	ch := e.sf.DoChan(key, fn)
	select {
	case r := <-ch:
		return r.Val, r.Err
	case <-ctx.Done():
		return nil, &Error{Kind: KindUnavailable, Msg: "gave up waiting (the operation continues)", RetryAfter: time.Second, Err: ctx.Err()}
	}
}

// syncInBackground reloads a cached record from storage once, without blocking
// the caller, so that a push handled by another instance is seen.
func (e *Engine) syncInBackground(appid string, s *slot) {
	if !s.syncing.CompareAndSwap(false, true) {
		return
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		s.syncing.Store(false)
		return
	}
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		defer s.syncing.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rec, err := e.loadRecord(ctx, appid)
		if err != nil && !isNotExist(err) {
			e.log.Warn("background sync of a cached record failed", zapApp(appid), zapErr(err))
			return
		}
		e.adopt(s, rec, e.now())
	}()
}

// adopt installs what storage holds into the slot, unless memory holds a newer
// record that storage lacks (a failed write). It returns the entry in effect.
func (e *Engine) adopt(s *slot, rec *Record, now time.Time) *entry {
	for {
		old := s.cur.Load()
		if old != nil && old.dirty && (rec == nil || rec.Generation < old.rec.Generation) {
			return old
		}
		en := e.newEntry(rec, now)
		if old != nil && old.rec != nil && rec != nil &&
			(old.rec.Generation == rec.Generation || (en.tok.Value != "" && en.tok.Value == old.tok.Value)) {
			// same token: keep what this instance learned about it
			en.suspect, en.confirmed, en.retryAt, en.failures, en.lastErr = old.suspect, old.confirmed, old.retryAt, old.failures, old.lastErr
		}
		if s.cur.CompareAndSwap(old, en) {
			return en
		}
	}
}

// backoff is the delay before attempt n (1-based), jittered ±20%.
func (e *Engine) backoff(n int) time.Duration {
	d := e.cfg.RetryBase
	for i := 1; i < n && d < e.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, e.cfg.RetryMax)
	j := time.Duration(rand.Int64N(int64(d)/5+1)) * 2
	return d - d/5 + j
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
func (e *Engine) call(ctx context.Context, fn func(context.Context) error) error {
	if fromRedirect(ctx) {
		return fn(ctx)
	}
	select {
	case e.calls <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-e.calls }()
	return fn(ctx)
}

// retry runs fn up to Attempts times while it fails with a retryable error
// (once for an exchange started by a redirect: its budget counts calls).
func (e *Engine) retry(ctx context.Context, fn func(context.Context) error) error {
	attempts := e.cfg.Attempts
	if fromRedirect(ctx) {
		attempts = 1
	}
	var err error
	for n := 1; n <= attempts; n++ {
		err = e.call(ctx, fn)
		if err == nil || !IsRetryable(err) || n == attempts {
			return err
		}
		if serr := sleep(ctx, e.backoff(n)); serr != nil {
			return err
		}
	}
	return err
}
