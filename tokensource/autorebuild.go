package tokensource

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Rebuild on an empty store (Config.RebuildOnEmpty), once per cluster.
//
// A rebuild that ran to its end leaves a marker in storage
// (tptoken/<component>/rebuild.json, state "done"). Each instance looks for
// it at start and then every minute; when it is missing (a new deployment,
// storage lost or wiped, also while instances run) one instance claims it
// (state "running", with a lease it renews) and rebuilds from the platform's
// list; the others wait. A claim whose lease ran out (its instance died) is
// taken over: the rebuild is idempotent. The storage lock guards only the
// marker's read-decide-write, never the whole run: an engine breaks a lock
// older than OpTimeout (lock.go), and a run takes longer.
//
// Storage that cannot be read is never taken for empty. The auto rebuild
// never verifies active records and never overwrites unreadable ones.

const (
	autoCheckEvery = time.Minute      // how often the marker is looked for
	autoRetryAfter = 30 * time.Second // after a storage or platform failure, and while waiting for a ticket
	autoLease      = 2 * time.Minute  // a claim lasts this long unless renewed
	autoRenewEvery = 30 * time.Second
)

// Marker states.
const (
	markerRunning = "running"
	markerDone    = "done"
)

// diskMarker is the stored marker of rebuild_on_empty.
type diskMarker struct {
	State      string         `json:"state"`
	Owner      string         `json:"owner"`
	LeaseUntil time.Time      `json:"lease_until,omitzero"`
	Trigger    string         `json:"trigger"` // why it ran: empty, no_marker, takeover
	StartedAt  time.Time      `json:"started_at"`
	FinishedAt time.Time      `json:"finished_at,omitzero"`
	Counts     map[string]int `json:"counts,omitempty"`
}

func (k keys) rebuildMarker() string { return k.prefix + "/rebuild.json" }

func (k keys) rebuildLock() string { return k.lockPrefix + ".rebuild" }

// autoRebuilder is the state of one engine's rebuild_on_empty loop.
type autoRebuilder struct {
	e     *Engine
	owner string // this engine, in markers
	// every and retry are autoCheckEvery and autoRetryAfter, shorter when the
	// sweep is (tests).
	every, retry time.Duration
	sawDone      bool // the last look found the marker done (logged once)
}

func newOwnerID() string {
	host, _ := os.Hostname()
	return newChainID() + "@" + host
}

// autoRebuild runs rebuild_on_empty until ctx ends (Run owns it).
func (e *Engine) autoRebuild(ctx context.Context) {
	a := &autoRebuilder{e: e, owner: newOwnerID(),
		every: min(autoCheckEvery, e.cfg.SweepInterval), retry: min(autoRetryAfter, e.cfg.SweepInterval)}
	for {
		wait := a.step(ctx)
		if sleep(ctx, wait) != nil {
			e.autoRunning.Store(false)
			return
		}
	}
}

func (a *autoRebuilder) loadMarker(ctx context.Context) (*diskMarker, error) {
	key := a.e.keys.rebuildMarker()
	b, err := a.e.store.Load(ctx, key)
	if err != nil {
		return nil, err
	}
	var m diskMarker
	if err := a.e.codec.decode(key, b, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

func (a *autoRebuilder) storeMarker(ctx context.Context, m *diskMarker) error {
	key := a.e.keys.rebuildMarker()
	b, err := a.e.codec.encode(key, m)
	if err != nil {
		return err
	}
	return a.e.store.Store(ctx, key, b)
}

// step looks at the marker once, claims and runs the rebuild when it is
// due, and returns how long to wait before the next look.
func (a *autoRebuilder) step(ctx context.Context) time.Duration {
	e := a.e
	m, err := a.loadMarker(ctx)
	if err != nil && !isNotExist(err) {
		e.log.Warn("rebuild_on_empty: reading the rebuild marker failed; trying again", zapErr(err))
		return a.retry
	}
	now := e.now()
	if m == nil || m.State != markerDone {
		a.sawDone = false
	}
	switch {
	case m != nil && m.State == markerDone:
		e.autoRunning.Store(false)
		if !a.sawDone {
			a.sawDone = true
			e.log.Info("rebuild_on_empty: a finished rebuild is on record; nothing to do while the marker stays",
				zap.String("trigger", m.Trigger), zap.Time("finished_at", m.FinishedAt))
		}
		return a.every
	case m != nil && m.State == markerRunning && now.Before(m.LeaseUntil) && m.Owner != a.owner:
		e.autoRunning.Store(true) // another instance rebuilds: missing records answer 503, not 403
		return min(m.LeaseUntil.Sub(now)+time.Second, a.every)
	}
	trigger := "takeover"
	if m == nil {
		ids, err := e.appIDs(ctx)
		if err != nil {
			e.log.Warn("rebuild_on_empty: listing the records failed (never taken for an empty store); trying again", zapErr(err))
			return a.retry
		}
		trigger = "no_marker"
		if len(ids) == 0 {
			trigger = "empty"
		}
	}
	claimed, err := a.claim(ctx, trigger)
	if err != nil {
		e.log.Warn("rebuild_on_empty: claiming the rebuild failed; trying again", zapErr(err))
		return a.retry
	}
	if !claimed {
		return time.Second // another instance claimed it meanwhile: look again
	}
	switch trigger {
	case "empty":
		e.log.Error("NO AUTHORIZER RECORDS IN STORAGE for component " + e.cfg.ComponentAppID +
			" (new deployment or storage lost): rebuilding from the platform's authorized-app list (rebuild_on_empty)")
	case "no_marker":
		e.log.Error("NO REBUILD MARKER IN STORAGE for component " + e.cfg.ComponentAppID +
			" (storage lost or wiped, or rebuild_on_empty just enabled): rebuilding the authorizers without a usable record from the platform's authorized-app list (rebuild_on_empty); records in use are not touched")
	default:
		e.log.Warn("rebuild_on_empty: taking over a rebuild whose instance stopped renewing its claim",
			zap.String("previous_owner", m.Owner), zap.Time("lease_until", m.LeaseUntil))
	}
	return a.run(ctx, trigger)
}

// claim writes a running marker owned by this engine, under the marker's
// lock, unless the marker it finds there now is done or another instance's
// live claim.
func (a *autoRebuilder) claim(ctx context.Context, trigger string) (bool, error) {
	e := a.e
	release, err := e.acquire(ctx, e.keys.rebuildLock())
	if err != nil {
		return false, err
	}
	defer release()
	m, err := a.loadMarker(ctx)
	if err != nil && !isNotExist(err) {
		return false, err
	}
	now := e.now()
	if m != nil && (m.State == markerDone || now.Before(m.LeaseUntil) && m.Owner != a.owner) {
		return false, nil
	}
	e.autoRunning.Store(true)
	return true, a.storeMarker(ctx, &diskMarker{State: markerRunning, Owner: a.owner, LeaseUntil: now.Add(autoLease), Trigger: trigger, StartedAt: now})
}

// renew extends this engine's claim, under the marker's lock. It reports
// false when the claim is not this engine's any more (taken over).
func (a *autoRebuilder) renew(ctx context.Context, done *diskMarker) (bool, error) {
	e := a.e
	release, err := e.acquire(ctx, e.keys.rebuildLock())
	if err != nil {
		return true, err // keep running: the lease outlives a few failed renewals
	}
	defer release()
	m, err := a.loadMarker(ctx)
	if err != nil && !isNotExist(err) {
		return true, err
	}
	if m == nil || m.Owner != a.owner || m.State != markerRunning {
		return false, nil
	}
	if done != nil {
		return true, a.storeMarker(ctx, done)
	}
	m.LeaseUntil = e.now().Add(autoLease)
	return true, a.storeMarker(ctx, m)
}

// run waits for a component token, rebuilds while renewing the claim, and
// marks the rebuild done.
func (a *autoRebuilder) run(ctx context.Context, trigger string) time.Duration {
	e := a.e
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Add(1)
	go func() { // the lease: owned by this run, ends with it
		defer wg.Done()
		t := time.NewTicker(autoRenewEvery)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				mine, err := a.renew(runCtx, nil)
				if err != nil && runCtx.Err() == nil {
					e.log.Warn("rebuild_on_empty: renewing the claim failed", zapErr(err))
				}
				if !mine {
					e.log.Warn("rebuild_on_empty: another instance took the rebuild over; stopping this one")
					cancel()
					return
				}
			}
		}
	}()

	started := e.now()
	next := 0 // the next 10 % step to log
	progress := func(ev RebuildEvent) {
		run := e.rebuilding.Load()
		if ev.Event != "result" || run == nil {
			return
		}
		s := run.sum // run.mu is held: Progress runs inside emit
		done, total := 0, max(s.PlatformTotal, s.Listed)
		for _, n := range s.Counts {
			done += n
		}
		if total > 0 && done*10/total > next {
			next = done * 10 / total
			e.log.Info("rebuild_on_empty progress", zap.Int("done", done), zap.Int("total", total), zap.Any("counts", s.Counts))
		}
	}
	for {
		sum, err := e.rebuild(runCtx, RebuildOptions{Progress: progress}, RebuildOnEmpty)
		if err == nil {
			if sum.Interrupted {
				return a.retry // this instance stops (or lost the claim): the lease runs out and another takes over
			}
			done := &diskMarker{State: markerDone, Owner: a.owner, Trigger: trigger, StartedAt: started, FinishedAt: e.now(), Counts: sum.Counts}
			if _, err := a.renew(ctx, done); err != nil {
				e.log.Error("rebuild_on_empty: storing the done marker failed: the rebuild runs again once the claim runs out", zapErr(err))
			}
			e.autoRunning.Store(false)
			fields := []zap.Field{zap.Any("counts", sum.Counts), zap.Int("listed", sum.Listed), zap.Int("not_listed", sum.NotListedTotal),
				zap.Duration("took", e.now().Sub(started))}
			failed := sum.Error != ""
			for r, n := range sum.Counts {
				failed = failed || n > 0 && failedResult(r)
			}
			if failed {
				e.log.Error(fmt.Sprintf("rebuild_on_empty done, but some authorizers failed: run `caddy tptoken rebuild` (component %s) once the cause is fixed", e.cfg.ComponentAppID),
					append(fields, zap.String("error", sum.Error))...)
			} else {
				e.log.Warn("rebuild_on_empty done: every listed authorizer has a usable record", fields...)
			}
			return a.every
		}
		// No component token yet (after storage loss a new instance waits for
		// the next ticket push, up to 10 minutes), or an operator's rebuild
		// runs here: wait, keeping the claim.
		if KindOf(err) == KindNoTicket {
			e.log.Warn("rebuild_on_empty: waiting for a component ticket (pushed every 10 minutes) before rebuilding", zapErr(err))
		} else {
			e.log.Warn("rebuild_on_empty: cannot start the rebuild yet; trying again", zapErr(err))
		}
		if sleep(runCtx, a.retry) != nil {
			return a.retry
		}
	}
}

// rebuildInProgress: a rebuild runs on this instance, or (rebuild_on_empty)
// on another one: a missing record may be rebuilt any moment.
func (e *Engine) rebuildInProgress() bool {
	return e.rebuilding.Load() != nil || e.autoRunning.Load()
}
