package tokensource

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Rebuild from the platform. The platform keeps the authorization relation
// itself: its authorized-app list names every authorizer of the TP, and the
// retrieve-code API (找回授权码) gives a new code for each, which an exchange
// turns into a new token chain (docs/protocol.md, sections "Retrieve" and
// "Authorized-app list"). So a record storage lost, or one whose refresh
// token is spent or lost, costs no re-authorization: Rebuild pages through
// the list and, for each authorizer without a usable record, retrieves and
// exchanges under the authorizer's lock.
//
// Each authorizer goes the way obtain goes (refresh.go): read without the
// lock, and if the record is usable stop there (a second run costs list
// pages only); otherwise wait for the rebuild's rate, take the lock, read
// again, decide on what storage holds now, retrieve, exchange, and store
// before the lock is released. So two runs at once, on one instance or
// several, exchange each authorizer once: the second to take the lock finds
// the first one's record. The UPDATE_AUTHORIZED push the retrieve causes
// carries the code already exchanged, which the push path recognizes
// (LastCode) and leaves alone.
//
// What a record needs, decided under the lock (rebuildLocked):
//
//	missing, or damaged                  retrieve + exchange             rebuilt
//	sealed with a key this instance      nothing (the records of an      skipped_unreadable
//	lacks                                instance with another key are    (rebuilt with
//	                                     its live chains); with           OverwriteUnreadable)
//	                                     OverwriteUnreadable as missing
//	other read error                     nothing                         failed
//	needs_recovery, no refresh token,    retrieve + exchange             rebuilt
//	refresh token expired
//	unauthorized, yet listed             retrieve: 40004/40022 writes     not_authorized / rebuilt
//	                                     nothing; a code is exchanged
//	active                               nothing; with Verify one refresh unchanged / refreshed /
//	                                     (40021: recovery), once per run  recovered
//	the other token family               nothing                          skipped_other_family
//	unsaved in this instance's memory    written back first, then judged  usually unchanged
//
// An active record is never exchanged over: an exchange kills the chain
// another instance may be serving. A record sealed with another key is
// never overwritten by default: two instances configured with different
// keys would otherwise exchange over each other's records forever, each
// killing the chain the other serves.

// Results of a rebuild for one authorizer (RebuildEvent.Result).
const (
	RebuildRebuilt           = "rebuilt"              // a code was retrieved and exchanged: the record is new
	RebuildUnchanged         = "unchanged"            // the record was usable (or was written back from memory)
	RebuildRefreshed         = "refreshed"            // Verify: refreshed
	RebuildRecovered         = "recovered"            // Verify: the refresh token was spent (40021) and recovered
	RebuildNotAuthorized     = "not_authorized"       // the platform says the authorization is gone (40004/40022)
	RebuildSkippedUnreadable = "skipped_unreadable"   // sealed with a key this instance lacks: fix the key
	RebuildSkippedFamily     = "skipped_other_family" // a record of the other token family
	RebuildBusy              = "busy"                 // another instance held its lock too long: rerun
	RebuildFailed            = "failed"               // see the detail; rerun once fixed
	RebuildNotListed         = "not_listed"           // asked for (AppIDs) but not in the platform's list
)

// Triggers of a rebuild.
const (
	RebuildByOperator = "operator" // Rebuild (the admin API, caddy tptoken rebuild)
	RebuildOnEmpty    = "auto"     // Config.RebuildOnEmpty
)

// maxRebuildRate caps the rebuild's rate (authorizers worked on per second):
// no rate limit of the retrieve API is documented.
const maxRebuildRate = 10

// Listing: pages of at most listPageSize, paced at listPagesPerSecond.
const (
	listPageSize       = 50
	listPagesPerSecond = 5
	maxListPages       = 20002 // a million authorizers, and 2 more pages
	maxNotListedShown  = 100
)

// RebuildOptions configure Rebuild.
type RebuildOptions struct {
	// Verify also refreshes each active record once (a refresh token the
	// platform rejects is recovered): for a storage restored from a backup,
	// whose refresh tokens may be spent.
	Verify bool
	// OverwriteUnreadable rebuilds records this instance cannot decrypt,
	// sealing the new ones with its key. Only when the key they were sealed
	// with is lost for good: while an instance has it, those records are its
	// live chains.
	OverwriteUnreadable bool
	// Rate is how many authorizers are worked on per second (those needing no
	// work cost no platform call and are not counted); 0 means RenewRate,
	// at most 10.
	Rate float64
	// AppIDs limits the run to these authorizers; the platform's list is still
	// read, and an appid it does not name is reported not_listed, untouched.
	AppIDs []string
	// Progress receives each event as it happens, one at a time; it must not
	// block for long (workers wait for it).
	Progress func(RebuildEvent)
}

// RebuildEvent is one step of a rebuild; Event says which, and which fields
// it carries:
//   - "listed", after each page of the platform's list: PlatformTotal (the
//     list's total), Listed (distinct authorizers so far, within AppIDs);
//   - "result", for each authorizer: AppID (or Fingerprint for an appid of
//     AppIDs the platform did not list), Result, Detail, Authorizer;
//   - "end" (Rebuild's return value): the summary, every field but those of
//     a result. ComponentInfo shows a running rebuild as a "running" event.
type RebuildEvent struct {
	Event       string `json:"event"`
	AppID       string `json:"appid,omitempty"`
	Fingerprint string `json:"fingerprint,omitempty"`
	Result      string `json:"result,omitempty"`
	Detail      string `json:"detail,omitempty"`
	Authorizer  *Info  `json:"authorizer,omitempty"`

	Trigger       string         `json:"trigger,omitempty"`
	StartedAt     time.Time      `json:"started_at,omitzero"`
	FinishedAt    time.Time      `json:"finished_at,omitzero"`
	PlatformTotal int            `json:"platform_total,omitempty"`
	Listed        int            `json:"listed,omitempty"`
	Counts        map[string]int `json:"counts,omitempty"` // results by name
	// Malformed counts list entries that are not appids (never acted on).
	Malformed int `json:"malformed,omitempty"`
	// ListChanged: the list's total changed while it was read (twice at
	// most): authorizers that came or went meanwhile may be missed; rerun.
	ListChanged bool `json:"list_changed,omitempty"`
	// NotListed are authorizers storage holds that the platform did not list
	// (the first 100; NotListedTotal counts them all). They are left alone:
	// the next renewal settles them (40004 marks them unauthorized).
	NotListed      []string `json:"not_listed,omitempty"`
	NotListedTotal int      `json:"not_listed_total,omitempty"`
	// Interrupted: the run was cancelled; NotAttempted listed authorizers
	// were not worked on (and the list may be incomplete). Rerunning is safe.
	Interrupted  bool `json:"interrupted,omitempty"`
	NotAttempted int  `json:"not_attempted,omitempty"`
	// Error says why the run stopped early (the list could not be read, the
	// engine shut down).
	Error string `json:"error,omitempty"`
}

// failedResult reports a result that makes the run fail: something to rerun
// or to fix.
func failedResult(r string) bool {
	return r == RebuildFailed || r == RebuildBusy || r == RebuildSkippedUnreadable
}

// rebuildRun is the state of the rebuild running on an engine.
type rebuildRun struct {
	mu       sync.Mutex
	sum      RebuildEvent // Event "running" while it runs
	progress func(RebuildEvent)
	trigger  string
	obs      Observer
}

func (r *rebuildRun) emit(ev RebuildEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch ev.Event {
	case "listed":
		r.sum.PlatformTotal, r.sum.Listed = ev.PlatformTotal, ev.Listed
	case "result":
		r.sum.Counts[ev.Result]++
		r.obs.RebuildResult(r.trigger, ev.Result)
	}
	if r.progress != nil {
		r.progress(ev)
	}
}

func (r *rebuildRun) snapshot() RebuildEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sum
	s.Counts = make(map[string]int, len(r.sum.Counts))
	for k, v := range r.sum.Counts {
		s.Counts[k] = v
	}
	return s
}

// Rebuild restores, from the platform's authorized-app list, every
// authorizer of the TP that has no usable record (see above), and returns
// the summary ("end" event). It runs once at a time per engine (KindBusy
// otherwise). A run that ends (ctx, the engine closing) leaves every
// authorizer either done or untouched: the operation on one authorizer is an
// engine operation, not cut off by ctx. Running it again changes nothing
// for the authorizers done.
func (e *Engine) Rebuild(ctx context.Context, o RebuildOptions) (RebuildEvent, error) {
	return e.rebuild(ctx, o, RebuildByOperator)
}

func (e *Engine) rebuild(ctx context.Context, o RebuildOptions, trigger string) (RebuildEvent, error) {
	perSecond := o.Rate
	if perSecond == 0 {
		perSecond = min(e.cfg.RenewRate, maxRebuildRate)
	}
	if math.IsNaN(perSecond) || perSecond <= 0 || perSecond > maxRebuildRate {
		return RebuildEvent{}, &Error{Kind: KindBadInput, Msg: fmt.Sprintf("rate %v: want more than 0 and at most %d authorizers per second", o.Rate, maxRebuildRate)}
	}
	var want map[string]bool
	if len(o.AppIDs) > 0 {
		want = make(map[string]bool, len(o.AppIDs))
		for _, id := range o.AppIDs {
			if err := CheckAppID(id); err != nil {
				return RebuildEvent{}, WithoutAppID(err, id)
			}
			want[id] = true
		}
	}
	start := e.now()
	run := &rebuildRun{progress: o.Progress, trigger: trigger, obs: e.obs,
		sum: RebuildEvent{Event: "running", Trigger: trigger, StartedAt: start, Counts: map[string]int{}}}
	if !e.rebuilding.CompareAndSwap(nil, run) {
		cur := e.rebuilding.Load().snapshot()
		return RebuildEvent{}, &Error{Kind: KindBusy, RetryAfter: 30 * time.Second,
			Msg: fmt.Sprintf("a rebuild (trigger %s) started at %s is running on this instance; wait for it to end (GET /tptoken/component shows its progress)",
				cur.Trigger, cur.StartedAt.UTC().Format(time.RFC3339))}
	}
	defer e.rebuilding.Store(nil)
	// A component token first: without one nothing below can work, and the
	// caller gets the clear reason (no ticket yet) instead of a failed run.
	if _, err := e.componentToken(ctx); err != nil {
		return RebuildEvent{}, err
	}
	e.log.Info("rebuild from the platform's authorized-app list started", zap.String("trigger", trigger),
		zap.Float64("rate", perSecond), zap.Bool("verify", o.Verify), zap.Bool("overwrite_unreadable", o.OverwriteUnreadable), zap.Int("appids", len(o.AppIDs)))

	ids := make(chan string, 2*listPageSize)
	listed := map[string]bool{}
	var listErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the producer: owned by this call, ends with the list or ctx
		defer wg.Done()
		defer close(ids)
		listErr = e.listAuthorized(ctx, run, listed, want, ids)
	}()

	// Workers (owned by this call, they end with the list): the rate bounds
	// the platform calls; more workers than background ones only ride out
	// lock waits behind another instance's rebuild.
	lim := rate.NewLimiter(rate.Limit(perSecond), 1)
	var notAttempted atomic.Int64
	var stopped atomic.Bool // the engine shut down: the rest cannot be done
	for range max(e.cfg.BackgroundWorkers, 4) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				if ctx.Err() != nil || stopped.Load() {
					notAttempted.Add(1)
					continue
				}
				res, ok := e.rebuildOne(ctx, id, o, lim, start)
				if !ok {
					notAttempted.Add(1)
					continue
				}
				if errors.Is(res.err, errClosed) {
					stopped.Store(true)
				}
				run.emit(res.RebuildEvent)
			}
		}()
	}
	wg.Wait()

	sum := run.snapshot()
	sum.Event, sum.FinishedAt = "end", e.now()
	sum.NotAttempted = int(notAttempted.Load())
	sum.Interrupted = ctx.Err() != nil
	switch {
	case stopped.Load():
		sum.Error = "the token engine shut down (a config reload replaced it?): rerun the rebuild"
	case listErr != nil && !sum.Interrupted:
		sum.Error = listErr.Error()
	}
	for id := range want {
		if !listed[id] && listErr == nil && !sum.Interrupted {
			ev := RebuildEvent{Event: "result", Fingerprint: Secret(id).Fingerprint(), Result: RebuildNotListed,
				Detail: "the platform's authorized-app list does not name this appid: not authorized to this TP; left alone"}
			run.emit(ev)
			sum.Counts[RebuildNotListed]++
		}
	}
	if want == nil && listErr == nil && !sum.Interrupted {
		if stored, err := e.appIDs(ctx); err == nil {
			for _, id := range stored {
				if !listed[id] {
					sum.NotListedTotal++
					if len(sum.NotListed) < maxNotListedShown {
						sum.NotListed = append(sum.NotListed, id)
					}
				}
			}
		}
	}
	outcome := "ok"
	for r, n := range sum.Counts {
		if n > 0 && failedResult(r) {
			outcome = "failed"
		}
	}
	if sum.Error != "" {
		outcome = "failed"
	}
	if sum.Interrupted {
		outcome = "interrupted"
	}
	e.obs.RebuildDone(trigger, outcome)
	fields := []zap.Field{zap.String("trigger", trigger), zap.String("outcome", outcome), zap.Int("listed", sum.Listed),
		zap.Int("platform_total", sum.PlatformTotal), zap.Any("counts", sum.Counts), zap.Int("not_listed", sum.NotListedTotal),
		zap.Int("not_attempted", sum.NotAttempted), zap.Bool("list_changed", sum.ListChanged), zap.Duration("took", sum.FinishedAt.Sub(start))}
	if sum.Error != "" {
		fields = append(fields, zap.String("error", sum.Error))
	}
	if outcome == "ok" {
		e.log.Info("rebuild done", fields...)
	} else {
		e.log.Warn("rebuild ended with authorizers to rerun or fix", fields...)
	}
	return sum, nil
}

// listAuthorized pages through the platform's authorized-app list and sends
// each distinct appid (within want, when set) on out once. The order of the
// list and its stability while paging are not documented: pages are read
// until a short one, at most ⌈total/50⌉+2 of them; if the total changed
// meanwhile, the list is read once more (new appids only), and the run says so.
func (e *Engine) listAuthorized(ctx context.Context, run *rebuildRun, seen, want map[string]bool, out chan<- string) error {
	pace := rate.NewLimiter(listPagesPerSecond, 1)
	sent := 0
	for pass := 1; pass <= 2; pass++ {
		first, last := -1, 0
		for page, pages := 1, 1; page <= pages; page++ {
			if err := pace.Wait(ctx); err != nil {
				return err
			}
			var apps []authorizedApp
			var total int
			err := e.withComponentToken(ctx, func(ct Secret) error {
				return e.retry(ctx, func(ctx context.Context) error {
					var err error
					t0 := time.Now()
					apps, total, err = e.client.AuthorizedApps(ctx, ct, page, listPageSize)
					e.logCall(OpAppList, "", t0, err)
					return err
				})
			})
			if err != nil {
				return fmt.Errorf("reading the platform's authorized-app list (page %d) failed: %w", page, err)
			}
			if page == 1 {
				first = total
				pages = min((max(total, 0)+listPageSize-1)/listPageSize+2, maxListPages)
			}
			last = total
			rand.Shuffle(len(apps), func(i, j int) { apps[i], apps[j] = apps[j], apps[i] }) // two runs at once collide less
			for _, a := range apps {
				if !ValidAppID(a.AppID) {
					run.mu.Lock()
					run.sum.Malformed++
					run.mu.Unlock()
					continue
				}
				if seen[a.AppID] {
					continue
				}
				seen[a.AppID] = true
				if want != nil && !want[a.AppID] {
					continue
				}
				select {
				case out <- a.AppID:
					sent++
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			run.emit(RebuildEvent{Event: "listed", PlatformTotal: total, Listed: sent})
			if len(apps) < listPageSize {
				break
			}
		}
		if first == last {
			return nil
		}
		run.mu.Lock()
		run.sum.ListChanged = true
		run.mu.Unlock()
		e.log.Warn("the authorized-app list changed while it was read: reading it once more", zap.Int("total_first", first), zap.Int("total_last", last))
	}
	return nil
}

// rebuildResult is a result event and the error behind it, if any.
type rebuildResult struct {
	RebuildEvent
	err error
}

// rebuildOne works on one listed authorizer; ok is false when the run was
// cancelled before anything was done for it.
func (e *Engine) rebuildOne(ctx context.Context, appid string, o RebuildOptions, lim *rate.Limiter, start time.Time) (res rebuildResult, ok bool) {
	res.Event, res.AppID = "result", appid
	// 1. Without the lock: most records of a second run are usable.
	rec, err := e.loadRecord(ctx, appid)
	switch {
	case err == nil && !e.memoryUnsaved(appid):
		if rec.Family != e.family {
			return e.resultFor(res, RebuildSkippedFamily, rec, familyDetail(rec.Family, e.family)), true
		}
		if usableRecord(rec, e.now()) && !o.Verify {
			return e.resultFor(res, RebuildUnchanged, rec, ""), true
		}
	case errors.Is(err, errRecordKey) && !o.OverwriteUnreadable:
		return e.resultFor(res, RebuildSkippedUnreadable, nil, unreadableDetail), true
	case err != nil && !isNotExist(err) && !errors.Is(err, errRecordKey) && !errors.Is(err, errRecordCorrupt):
		return e.resultFor(res, RebuildFailed, nil, "cannot read the record from storage: "+err.Error()), true
	}
	// 2. The rate, only for work that may call the platform, never under a lock.
	if lim.Wait(ctx) != nil {
		return res, false
	}
	// 3. Under the lock, as an engine operation ctx does not cut off.
	_, untag := e.tagApp(appid, CauseRebuild, false)
	defer untag()
	v, err := e.lockedRead(ctx, "\x00rebuild:", appid, "rebuild it", func(octx context.Context, s *slot, prev *record, readErr error) (any, error) {
		return e.rebuildLocked(octx, appid, s, prev, readErr, o, start), nil
	})
	switch {
	case err == nil:
		return v.(rebuildResult), true
	case errors.Is(err, errLockTimeout):
		return e.resultFor(res, RebuildBusy, nil, "another instance held its lock longer than lock_timeout (a rebuild there?): rerun"), true
	case errors.Is(err, errClosed):
		res.err = err
		return e.resultFor(res, RebuildFailed, nil, "the token engine shut down: rerun the rebuild"), true
	case ctx.Err() != nil:
		return e.resultFor(res, RebuildFailed, nil, "interrupted while it ran: the operation continues on the server; rerun to see its result"), true
	}
	return e.resultFor(res, RebuildFailed, nil, err.Error()), true
}

const unreadableDetail = "sealed with an encryption key this instance does not have: configure that key (the records are some instance's live chains); " +
	"only if it is lost for good, rebuild with overwrite_unreadable"

func familyDetail(rec, own Family) string {
	return fmt.Sprintf("authorized under api %s, this instance uses api %s: left alone; move it explicitly with caddy tptoken recover", rec, own)
}

// usableRecord: an active record whose refresh token may still be used.
func usableRecord(rec *record, now time.Time) bool {
	return rec.State == StateActive && !needsRecovery(rec, now)
}

// memoryUnsaved reports an unsaved record of appid in this instance's memory.
func (e *Engine) memoryUnsaved(appid string) bool {
	en := e.cachedEntry(appid)
	return en != nil && en.dirty
}

func (e *Engine) resultFor(res rebuildResult, result string, rec *record, detail string) rebuildResult {
	res.Result, res.Detail = result, detail
	if rec != nil {
		info := infoOf(rec)
		res.Authorizer = &info
	}
	return res
}

// rebuildLocked decides, on the record just read under appid's lock, what it
// needs (see the table above), and does it.
func (e *Engine) rebuildLocked(ctx context.Context, appid string, s *slot, prev *record, readErr error, o RebuildOptions, start time.Time) rebuildResult {
	res := rebuildResult{RebuildEvent: RebuildEvent{Event: "result", AppID: appid}}
	now := e.now()
	replaced := ""
	switch {
	case readErr == nil:
		// A record in memory that storage lacks, or holds older, is written back first.
		if cur := e.adopt(s, prev, now); cur.dirty {
			e.flushLocked(ctx, appid, s, cur)
			if cur = s.cur.Load(); cur.dirty {
				return e.resultFor(res, RebuildFailed, cur.rec, "this instance holds a newer record than storage and cannot write it: storage is failing")
			}
			var err error
			if prev, err = e.loadRecord(ctx, appid); err != nil && !isNotExist(err) {
				return e.resultFor(res, RebuildFailed, nil, "cannot read the record from storage: "+err.Error())
			}
			if prev != nil && cur.rec != nil && prev.Generation == cur.rec.Generation && prev.Chain == cur.rec.Chain {
				res.Detail = "written back from this instance's memory"
			}
		}
	case errors.Is(readErr, errRecordKey):
		if !o.OverwriteUnreadable {
			return e.resultFor(res, RebuildSkippedUnreadable, nil, unreadableDetail)
		}
		e.log.Warn("rebuild overwrites a record this instance cannot decrypt (overwrite_unreadable)", zapApp(appid), zapErr(readErr))
		replaced = "unreadable record replaced (overwrite_unreadable)"
	case errors.Is(readErr, errRecordCorrupt):
		e.log.Warn("rebuild overwrites a damaged record", zapApp(appid), zapErr(readErr))
		replaced = "damaged record replaced"
	default:
		return e.resultFor(res, RebuildFailed, nil, "cannot read the record from storage: "+readErr.Error())
	}

	switch {
	case prev == nil:
		detail := "missing: code retrieved and exchanged"
		if replaced != "" {
			detail = replaced + ": code retrieved and exchanged"
		}
		return e.rebuildExchange(ctx, appid, s, nil, detail)
	case prev.Family != e.family:
		return e.resultFor(res, RebuildSkippedFamily, prev, familyDetail(prev.Family, e.family))
	case prev.State == StateUnauthorized:
		return e.rebuildExchange(ctx, appid, s, prev, "marked unauthorized but listed again: code retrieved and exchanged")
	case !usableRecord(prev, now):
		if w := forcedWait(prev, now); w > 0 {
			return e.resultFor(res, RebuildFailed, prev, rateLimited(appid, w).Error())
		}
		return e.rebuildExchange(ctx, appid, s, prev.withForced(now), fmt.Sprintf("state %s, refresh token lost, spent or expired: code retrieved and exchanged", prev.State))
	case !o.Verify:
		return e.resultFor(res, RebuildUnchanged, prev, res.Detail)
	case !prev.LastRefresh.Before(start):
		return e.resultFor(res, RebuildUnchanged, prev, "refreshed since this run started")
	}
	// Verify: one refresh; a spent refresh token (40021) is recovered.
	if w := forcedWait(prev, now); w > 0 {
		return e.resultFor(res, RebuildFailed, prev, rateLimited(appid, w).Error())
	}
	cur := e.newEntry(prev.withForced(now), now)
	if _, err := e.renewLocked(ctx, appid, s, cur); err != nil {
		return e.rebuildFailure(ctx, res, appid, err)
	}
	next := s.cur.Load().rec // what renewLocked installed (and stored, unless the write failed)
	if next == nil || next.State != StateActive || next.LastRefresh.Before(start) {
		// renewLocked recorded a failure and answered with the token still serving
		return e.resultFor(res, RebuildFailed, next, lastErrorText(next))
	}
	result := RebuildRefreshed
	if next.Chain != prev.Chain {
		result = RebuildRecovered
	}
	return e.resultFor(res, result, next, "")
}

// rebuildExchange retrieves a code for appid and exchanges it (recoverLocked),
// storing the new record. prev is the record to follow, nil for none. A
// failure stores nothing when there was no record, and records the failure
// in it otherwise (an unauthorized record stays as it is).
func (e *Engine) rebuildExchange(ctx context.Context, appid string, s *slot, prev *record, detail string) rebuildResult {
	res := rebuildResult{RebuildEvent: RebuildEvent{Event: "result", AppID: appid}}
	base := prev
	if base == nil {
		base = &record{AppID: appid, Family: e.family}
	}
	next, err := e.recoverLocked(ctx, base)
	if err != nil {
		if prev != nil && prev.State != StateUnauthorized {
			now := e.now()
			_, _ = e.failedLocked(ctx, appid, s, e.newEntry(prev, now), prev, "rebuild", err)
		}
		return e.rebuildFailure(ctx, res, appid, err)
	}
	e.commitLocked(ctx, s, next)
	return e.resultFor(res, RebuildRebuilt, next, detail)
}

// rebuildFailure is the result of a failed retrieve, exchange or refresh.
func (e *Engine) rebuildFailure(ctx context.Context, res rebuildResult, appid string, err error) rebuildResult {
	res.err = err
	var info *record
	if rec, lerr := e.loadRecord(ctx, appid); lerr == nil {
		info = rec
	}
	switch {
	case needsReauthorization(err):
		return e.resultFor(res, RebuildNotAuthorized, info, "the platform says the authorization is gone: the mini-app must authorize the TP again")
	case isCodeExpired(err):
		return e.resultFor(res, RebuildFailed, info, "the retrieved code was already used or expired (an exchange answer lost?): the push may still complete it; rerun to check")
	}
	return e.resultFor(res, RebuildFailed, info, WithoutAppID(err, appid).Error())
}

func lastErrorText(rec *record) string {
	if rec == nil {
		return "the renewal failed"
	}
	if rec.LastError == nil {
		return string(rec.State)
	}
	return rec.LastError.Op + ": " + rec.LastError.Message
}

// rebuildStatus is the running rebuild's progress (ComponentInfo), or nil.
func (e *Engine) rebuildStatus() *RebuildEvent {
	run := e.rebuilding.Load()
	if run == nil {
		return nil
	}
	s := run.snapshot()
	return &s
}
