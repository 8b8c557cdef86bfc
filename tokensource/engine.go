package tokensource

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	gocache "github.com/patrickmn/go-cache"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Engine hands out tokens for the authorizers of one component (TP) appid and one
// token family. Several engines (instances) may share one Store.
type Engine struct {
	*base
	cfg    Config
	family Family
	client *client
	keys   keys

	slots *gocache.Cache // appid -> *slot
	comp  *single        // the component token (component.go)

	redirect redirectGate          // exchanges started by the authorization redirect
	pushes   *recentSet[time.Time] // pushes handled recently (replay memory)

	ticket  atomic.Pointer[diskTicket]
	summary atomic.Pointer[Summary]
	tags    sync.Map      // appid -> *opTag: operations reported apart (tags.go)
	newApps *rate.Limiter // recoveries of appids with no record (operator.go)

	rebuilding  atomic.Pointer[rebuildRun] // the rebuild running (rebuild.go)
	autoRunning atomic.Bool                // rebuild_on_empty runs in the cluster (autorebuild.go)
}

// New builds an Engine. It makes no I/O and starts no goroutine.
func New(cfg Config) (*Engine, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	cl, err := newClient(clientConfig{Family: cfg.Family, Endpoint: cfg.Endpoint, ComponentAppID: cfg.ComponentAppID,
		ComponentSecret: cfg.ComponentSecret, HTTPClient: cfg.HTTPClient, Timeout: cfg.CallTimeout})
	if err != nil {
		return nil, err
	}
	cd, err := newCodec(cfg.EncryptionKey, cfg.PreviousEncryptionKeys)
	if err != nil {
		return nil, err
	}
	e := &Engine{
		base: newBase(cfg.Store, cd, cfg.Logger, cfg.Now, cfg.Observer, cfg.MaxConcurrentCalls, limits{
			lockTimeout: cfg.LockTimeout, opTimeout: cfg.OpTimeout, attempts: cfg.Attempts,
			retryBase: cfg.RetryBase, retryMax: cfg.RetryMax, allowUnlocked: cfg.AllowUnlocked,
		}),
		cfg:     cfg,
		family:  cl.family,
		client:  cl,
		keys:    newKeys(cfg.ComponentAppID),
		slots:   gocache.New(gocache.NoExpiration, 0), // no janitor goroutine: idle slots are swept by the engine
		pushes:  newRecentSet[time.Time](pushesKept),
		newApps: rate.NewLimiter(rate.Every(newAppRecoveryEvery), newAppRecoveryBurst),
	}
	e.lockName = e.lockField
	e.comp = e.newComponentToken()
	e.redirect = newRedirectGate(&e.cfg)
	return e, nil
}

// Close waits for operations in flight (each is bounded by OpTimeout) and makes
// later operations fail. It never interrupts a refresh: that would lose its answer.
func (e *Engine) Close() error {
	e.close()
	return nil
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
	rec        *record // nil when missing
	tok        Token
	refreshAt  time.Time // refresh from here on
	unusableAt time.Time // never send the token from here on
	suspect    Secret    // a token reported rejected: not fresh (reject.go decides whether it is renewed)
	confirmed  bool      // the platform's own token API rejected suspect: it is not usable either
	checkedAt  time.Time // when storage last confirmed rec
	retryAt    time.Time // no platform attempt before this (backoff)
	failures   int
	lastErr    error         // why the last attempt failed
	dirty      bool          // rec is newer than what storage holds (a write failed)
	syncEvery  time.Duration // a single token's: reloaded once checkedAt is older (policy.go)
}

// keepLearned carries over to en what this instance learned about the same
// token in old: a rejection, a backoff, the last failure.
func (en *entry) keepLearned(old *entry) {
	en.suspect, en.confirmed, en.retryAt, en.failures, en.lastErr = old.suspect, old.confirmed, old.retryAt, old.failures, old.lastErr
}

func (e *Engine) newEntry(rec *record, now time.Time) *entry {
	en := &entry{rec: rec, checkedAt: now}
	if rec != nil && rec.State == StateActive && rec.AccessToken != "" {
		en.refreshAt, en.unusableAt = margins(rec.AccessIssued, rec.AccessExpiry, e.cfg.RefreshAhead)
		en.tok = Token{Value: rec.AccessToken, AppID: rec.AppID, Family: rec.Family, Expiry: rec.AccessExpiry, Generation: rec.Generation}
	}
	return en
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

// Token is an access token ready to be sent, with what is needed to send it.
type Token struct {
	Value      Secret
	AppID      string // authorizer appid, or the app of an app token; "" for a component token
	Family     Family
	Expiry     time.Time
	Generation uint64
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
			if e.syncDue(en, now) {
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
		return tok, err
	}
	if v, ok := e.slots.Get(appid); ok {
		v.(*slot).touch(now) // a slot obtain made is in use, not idle
	}
	e.obs.Lookup(appid, "obtained")
	return tok, nil
}

func (s *slot) touch(now time.Time) {
	if sec := now.Unix(); s.used.Load() != sec {
		s.used.Store(sec)
	}
}

// stateError is the error for a record that cannot give tokens, or nil.
func (e *Engine) stateError(appid string, en *entry) error {
	switch {
	case en.rec == nil && e.rebuildInProgress():
		return &Error{Kind: KindUnavailable, AppID: appid, RetryAfter: 30 * time.Second,
			Msg: "no record of this appid yet, and a rebuild from the platform's authorized-app list is running: try again shortly"}
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
		before := s.cur.Load()
		rec, err := e.loadRecord(ctx, appid)
		if err != nil && !isNotExist(err) {
			e.log.Warn("background sync of a cached record failed", zapApp(appid), zapErr(err))
			return
		}
		// Only over what memory held before the read: an entry installed
		// meanwhile (a renewal, a push) is newer news than this read, which
		// may hold a token rotated away since.
		if en, ok := e.adoptOver(s, before, rec, e.now()); ok && en.dirty {
			// Storage lacks the newest record (writeback.go): write it back now
			// rather than at the background loop's next pass.
			_, _ = e.await(ctx, ahead.key(appid), func() (any, error) { return e.obtain(appid, ahead) })
		}
	}()
}

// adopt installs what storage holds into the slot, unless memory holds a newer
// record that storage lacks (a failed write, or storage lost or restored from
// a backup: writeback.go); that one is kept, marked unsaved, and written back
// by flushLocked. It returns the entry in effect.
func (e *Engine) adopt(s *slot, rec *record, now time.Time) *entry {
	for {
		if en, ok := e.adoptOver(s, s.cur.Load(), rec, now); ok {
			return en
		}
	}
}

// adoptOver is one attempt of adopt, replacing old only: it fails when the
// slot no longer holds old.
func (e *Engine) adoptOver(s *slot, old *entry, rec *record, now time.Time) (*entry, bool) {
	if e.keepsMemory(old, rec) {
		if old.dirty {
			return old, true
		}
		kept := *old
		kept.dirty, kept.checkedAt = true, now
		if !s.cur.CompareAndSwap(old, &kept) {
			return nil, false
		}
		e.log.Warn("storage lacks this authorizer's newest record (storage lost, or an old backup restored): keeping the one in memory and writing it back",
			zapApp(old.rec.AppID), zap.Uint64("generation", old.rec.Generation), zap.Bool("stored", rec != nil))
		return &kept, true
	}
	en := e.newEntry(rec, now)
	if old != nil && old.rec != nil && rec != nil &&
		(old.rec.Generation == rec.Generation || (en.tok.Value != "" && en.tok.Value == old.tok.Value)) {
		// same token: keep what this instance learned about it
		en.keepLearned(old)
	}
	return en, s.cur.CompareAndSwap(old, en)
}
