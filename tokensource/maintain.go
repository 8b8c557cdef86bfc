package tokensource

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Background work. Run keeps, until its context ends:
//   - the component token fresh while tickets arrive;
//   - the access tokens of authorizers with recent traffic refreshed a little
//     before their refresh point, so requests never wait for a refresh;
//   - every refresh token renewed before RefreshTokenMargin, even for idle
//     authorizers (an idle refresh token dies after 30 days), found by a periodic
//     sweep of storage;
//   - unsaved records (a failed write) written again.
//
// Renewals are rate-limited (RenewRate) and run on BackgroundWorkers workers,
// and each one goes through the same lock-reload-recheck path as a request, so
// in a cluster every instance may sweep while each authorizer renews once.

// Summary is what the last sweep of storage found (ComponentInfo.Sweep).
type Summary struct {
	At                 time.Time     `json:"at"`
	ByState            map[State]int `json:"by_state"`
	EarliestRefreshExp time.Time     `json:"earliest_refresh_expiry,omitzero"`
	EarliestRefreshApp string        `json:"earliest_refresh_appid,omitempty"`
	Unreadable         int           `json:"unreadable"`
	// NotSealedWithKey counts readable records that are plain or sealed with a
	// previous key while an encryption key is configured: they are sealed with
	// it when next written, or by Reseal.
	NotSealedWithKey    int   `json:"not_sealed_with_current_key,omitempty"`
	RenewalsScheduled   int   `json:"renewals_scheduled"`
	SweepDurationMillis int64 `json:"sweep_duration_ms"`
}

// job is one background renewal: of an authorizer's token (mode ahead or
// renewRefresh), or of the component token (appid "", mode ahead).
type job struct {
	appid string
	m     mode
}

// key is the job's single-flight key, shared with obtain's callers of the
// same mode, and its key in the queue (at most one queued job each).
func (j job) key() string {
	if j.appid == "" {
		return j.m.key(componentKey)
	}
	return j.m.key(j.appid)
}

// Run does the background work until ctx ends, then waits for its workers.
// Call it once per engine.
func (e *Engine) Run(ctx context.Context) {
	jobs := make(chan job, 1024)
	queued := sync.Map{} // job.key() → struct{}: at most one queued job each
	limiter := rate.NewLimiter(rate.Limit(e.cfg.RenewRate), 1)
	var wg sync.WaitGroup
	for range e.cfg.BackgroundWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case j := <-jobs:
					if limiter.Wait(ctx) != nil {
						return
					}
					e.runJob(ctx, j)
					queued.Delete(j.key())
				}
			}
		}()
	}
	enqueue := func(j job) bool {
		if _, dup := queued.LoadOrStore(j.key(), struct{}{}); dup {
			return false
		}
		select {
		case jobs <- j:
			return true
		default: // full: the next pass schedules it again
			queued.Delete(j.key())
			return false
		}
	}

	if e.cfg.RebuildOnEmpty {
		wg.Add(1)
		go func() { defer wg.Done(); e.autoRebuild(ctx) }()
	}

	tick := time.NewTicker(e.cfg.MaintainInterval)
	defer tick.Stop()
	sweep := time.NewTimer(e.firstSweepIn())
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-tick.C:
			e.maintain(enqueue, rand.Float64)
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			e.writeBackShared(wctx)
			cancel()
		case <-sweep.C:
			e.sweep(ctx, enqueue)
			sweep.Reset(e.nextSweepIn())
		}
	}
}

func (e *Engine) runJob(ctx context.Context, j job) {
	if ctx.Err() != nil {
		return
	}
	fn := func() (any, error) { return e.obtain(j.appid, j.m) }
	if j.appid == "" {
		fn = func() (any, error) { return e.comp.obtain(j.m, 0) }
	}
	select {
	case r := <-e.sf.DoChan(j.key(), fn):
		switch {
		case r.Err != nil && j.appid == "":
			e.log.Warn("keeping the component token fresh failed", zapErr(r.Err))
		case r.Err != nil:
			e.log.Debug("background renewal did not complete", zapApp(j.appid), zapErr(r.Err))
		}
	case <-ctx.Done():
	}
}

// maintain looks at what this instance holds in memory and queues the
// renewals due within the background lead (u draws its jitter, policy.go).
func (e *Engine) maintain(enqueue func(job) bool, u func() float64) {
	now := e.now()
	if e.queuesComponentAhead(e.comp.cur.Load(), now, u()) {
		enqueue(job{"", ahead})
	}
	for appid, item := range e.slots.Items() {
		s := item.Object.(*slot)
		en := s.cur.Load()
		if en == nil {
			continue
		}
		used := time.Unix(s.used.Load(), 0)
		switch {
		case e.queuesAhead(en, now, used, u()):
			enqueue(job{appid, ahead})
		case en.dirty:
			// Its newest record is in memory only: it stays cached until written.
		case now.Sub(used) > e.idleAfter():
			// Idle: forget the cached copy (the sweep still renews its refresh token).
			if !s.syncing.Load() {
				e.slots.Delete(appid)
			}
		}
	}
}

// sweep reads every record in storage: schedules refresh-token renewals and
// recoveries, and summarizes states for metrics.
func (e *Engine) sweep(ctx context.Context, enqueue func(job) bool) {
	start := time.Now()
	ids, err := e.appIDs(ctx)
	if err != nil {
		e.log.Error("listing authorizer records failed", zapErr(err))
		return
	}
	sum := Summary{At: e.now(), ByState: map[State]int{}}
	for _, id := range ids {
		if ctx.Err() != nil {
			return
		}
		rec, seal, err := e.loadRecordSeal(ctx, id)
		if err != nil {
			if !isNotExist(err) {
				sum.Unreadable++
				e.log.Error("reading an authorizer record failed", zapApp(id), zapErr(err))
			}
			continue
		}
		if e.codec.cur != nil && seal != sealCurrent {
			sum.NotSealedWithKey++
		}
		sum.ByState[rec.State]++
		if rec.State == StateActive && !rec.RefreshExpiry.IsZero() &&
			(sum.EarliestRefreshExp.IsZero() || rec.RefreshExpiry.Before(sum.EarliestRefreshExp)) {
			sum.EarliestRefreshExp, sum.EarliestRefreshApp = rec.RefreshExpiry, id
		}
		if e.queuesRenewal(rec, e.cachedEntry(id), e.now()) && enqueue(job{id, renewRefresh}) {
			sum.RenewalsScheduled++
		}
	}
	e.forgetOldCodes(ctx)
	e.forgetOldPushes(ctx)
	e.forgetOldMarkers(ctx)
	sum.SweepDurationMillis = time.Since(start).Milliseconds()
	e.summary.Store(&sum)
	e.log.Info("authorizer sweep done", zap.Int("authorizers", len(ids)), zap.Int("renewals_scheduled", sum.RenewalsScheduled),
		zap.Int("unreadable", sum.Unreadable), zap.Duration("took", time.Since(start)))
}
