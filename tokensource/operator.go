package tokensource

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Info returns what is on record for appid (storage first; memory when the
// newest record could not be written).
func (e *Engine) Info(ctx context.Context, appid string) (Info, error) {
	if err := CheckAppID(appid); err != nil {
		return Info{}, err
	}
	rec, err := e.loadRecord(ctx, appid)
	mem := e.cachedEntry(appid)
	if mem != nil && mem.dirty && mem.rec != nil && memoryNewer(mem.rec, rec) {
		info := infoOf(mem.rec)
		info.Unsaved = true
		return info, nil
	}
	if err != nil {
		if isNotExist(err) {
			return Info{}, &Error{Kind: KindUnknownAuthorizer, AppID: appid, Msg: "no record for this appid"}
		}
		return Info{}, err
	}
	return infoOf(rec), nil
}

func (e *Engine) cachedEntry(appid string) *entry {
	if v, ok := e.slots.Get(appid); ok {
		return v.(*slot).cur.Load()
	}
	return nil
}

// List returns up to limit authorizers after the appid `after` (sorted), and the
// appid to pass as `after` for the next page ("" on the last page).
func (e *Engine) List(ctx context.Context, after string, limit int) ([]Info, string, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	ids, err := e.appIDs(ctx)
	if err != nil {
		return nil, "", err
	}
	out := make([]Info, 0, min(limit, len(ids)))
	next := ""
	for _, id := range ids {
		if id <= after {
			continue
		}
		if len(out) == limit {
			next = out[len(out)-1].AppID
			break
		}
		info, err := e.Info(ctx, id)
		if err != nil {
			info = Info{AppID: id, LastError: &LastError{Op: "read", Message: err.Error(), At: e.now()}}
		}
		out = append(out, info)
	}
	return out, next, nil
}

// Refresh renews the authorizer's tokens now (single-flight like any refresh),
// unless another instance renewed them while this call waited for the lock.
// Forced operations are budgeted per authorizer (forcedWait): over the budget
// it fails with KindRateLimited and calls nothing.
func (e *Engine) Refresh(ctx context.Context, appid string) (Info, error) {
	if err := CheckAppID(appid); err != nil {
		return Info{}, err
	}
	if rec, err := e.loadRecord(ctx, appid); err == nil {
		if w := forcedWait(rec, e.now()); w > 0 {
			return Info{}, rateLimited(appid, w) // before queueing for the lock
		}
	}
	if _, err := e.wait(ctx, forced.key(appid), func() (any, error) { return e.obtain(appid, forced) }); err != nil {
		return Info{}, err
	}
	return e.Info(ctx, appid)
}

// Recover gets a new code with the retrieve API and exchanges it, under the
// authorizer's lock: for a record whose refresh token is lost. It counts
// against the authorizer's forced-operation budget.
//
// An appid with no record is refused (KindUnknownAuthorizer, nothing stored)
// unless allowNew: then it is recovered if the platform says it is authorized
// to the TP (after restoring an old backup, say), and a failure stores nothing.
// Such recoveries are rate-limited per engine, and the appid stays out of logs
// and metric labels until the platform confirms it.
func (e *Engine) Recover(ctx context.Context, appid string, allowNew bool) (Info, error) {
	if err := CheckAppID(appid); err != nil {
		return Info{}, err
	}
	tag, untag := e.tagApp(appid, CauseLive, !e.onRecord(ctx, appid))
	defer untag()
	_, err := e.locked(ctx, "\x00recover:", appid, "recover", func(octx context.Context, s *slot, prev *record) (any, error) {
		now := e.now()
		if prev == nil {
			return e.recoverNewLocked(octx, appid, s, allowNew)
		}
		tag.unconfirmed.Store(false)
		if w := forcedWait(prev, now); w > 0 {
			return nil, rateLimited(appid, w)
		}
		prev = prev.withForced(now)
		next, err := e.recoverLocked(octx, prev)
		if err != nil {
			cur := s.cur.Load()
			if cur == nil || cur.rec == nil {
				cur = e.newEntry(prev, now)
			}
			return e.failedLocked(octx, appid, s, cur, prev, "recover", err)
		}
		return e.commitLocked(octx, s, next), nil
	})
	if tag.unconfirmed.Load() {
		e.dropEmptySlot(appid)
		return Info{}, WithoutAppID(err, appid)
	}
	if err != nil {
		return Info{}, err
	}
	return e.Info(ctx, appid)
}

// recoverNewLocked recovers an appid that has no record; it stores nothing
// unless the recovery succeeds. The storage lock of appid is held.
func (e *Engine) recoverNewLocked(ctx context.Context, appid string, s *slot, allowNew bool) (any, error) {
	if !allowNew {
		return nil, &Error{Kind: KindUnknownAuthorizer, Msg: "no record for this appid, so nothing to recover and nothing was changed. " +
			"If it is an authorizer of this TP that tptoken never recorded (for example one authorized after the backup you restored), " +
			"recover it as new (admin API ?new=1, CLI --new)"}
	}
	if !e.newApps.Allow() {
		return nil, &Error{Kind: KindRateLimited, RetryAfter: newAppRecoveryEvery,
			Msg: fmt.Sprintf("recoveries of appids with no record are limited to %d at once, then one per %s, on each instance; try again later", newAppRecoveryBurst, newAppRecoveryEvery)}
	}
	next, err := e.recoverLocked(ctx, &record{AppID: appid, Family: e.family})
	if err != nil {
		return nil, err // nothing stored: the appid may not even be one
	}
	next.ForcedAt = []time.Time{e.now()}
	return e.commitLocked(ctx, s, next), nil
}

// onRecord reports whether storage holds a record of appid, which makes it
// a confirmed appid (see opTag). Under the lock, the operation checks again.
func (e *Engine) onRecord(ctx context.Context, appid string) bool {
	_, err := e.loadRecord(ctx, appid)
	return err == nil
}

// dropEmptySlot forgets the in-memory slot of an appid that got no record.
func (e *Engine) dropEmptySlot(appid string) {
	if v, ok := e.slots.Get(appid); ok && v.(*slot).cur.Load() == nil {
		e.slots.Delete(appid)
	}
}

// Forget deletes the authorizer's record. Its refresh token is lost for good:
// only a new authorization (or a recovery) brings it back.
func (e *Engine) Forget(ctx context.Context, appid string) error {
	if err := CheckAppID(appid); err != nil {
		return err
	}
	_, err := e.locked(ctx, "\x00forget:", appid, "forget it", func(octx context.Context, _ *slot, prev *record) (any, error) {
		if prev != nil {
			// Instances holding it in memory would write it back (writeback.go).
			if err := e.markForgotten(octx, prev); err != nil {
				return nil, &Error{Kind: KindUnavailable, AppID: appid, Msg: "storing the deletion marker failed; nothing was deleted", RetryAfter: 5 * time.Second, Err: err}
			}
		}
		if err := e.store.Delete(octx, e.keys.authorizer(appid)); err != nil && !isNotExist(err) {
			return nil, err
		}
		e.slots.Delete(appid)
		e.log.Warn("authorizer record deleted by an operator", zapApp(appid))
		return nil, nil
	})
	return err
}

// ImportResult is the outcome of importing one legacy refresh token.
type ImportResult struct {
	// AppID is the row's appid once confirmed (see opTag); "" otherwise.
	AppID string `json:"appid,omitempty"`
	// Fingerprint identifies the row's appid value when it is not shown: the
	// first 16 hex digits of its SHA-256.
	Fingerprint string `json:"fingerprint,omitempty"`
	Result      string `json:"result"` // imported, recovered, unchanged, skipped, failed
	Detail      string `json:"detail,omitempty"`
	Info        *Info  `json:"authorizer,omitempty"`
}

// Import takes over an authorizer from a legacy token store: the refresh token
// is verified by one refresh under the lock and the rotated pair is stored.
// A record that already serves is left alone (importing an older chain would
// kill it); importing the same token twice is a no-op. A rejected token (40021)
// is recovered with the retrieve API when the authorization still exists.
//
// The row's appid is not trusted (with swapped columns it is a refresh token):
// until a record for it exists or the platform accepted a call about it, it is
// kept out of the result, logs and metric labels, and nothing is stored under
// it. Platform calls and recoveries are reported with CauseImport.
func (e *Engine) Import(ctx context.Context, appid string, refreshToken Secret, refreshExpiry time.Time) ImportResult {
	if err := CheckAppID(appid); err != nil {
		return ImportResult{Fingerprint: Secret(appid).Fingerprint(), Result: "failed", Detail: err.Error()}
	}
	if refreshToken == "" {
		return ImportResult{Fingerprint: Secret(appid).Fingerprint(), Result: "failed", Detail: "authorizer_refresh_token is empty"}
	}
	tag, untag := e.tagApp(appid, CauseImport, !e.onRecord(ctx, appid))
	defer untag()
	v, err := e.locked(ctx, "\x00import:", appid, "import it", func(octx context.Context, s *slot, prev *record) (any, error) {
		if prev != nil {
			tag.unconfirmed.Store(false)
		}
		fp := "import:" + refreshToken.Fingerprint()
		if prev != nil && prev.State == StateActive {
			if prev.LastCode == fp {
				return ImportResult{Result: "unchanged", Detail: "this refresh token was imported before"}, nil
			}
			if prev.Family == e.family && prev.RefreshToken != "" && e.now().Before(prev.RefreshExpiry) {
				return ImportResult{Result: "skipped", Detail: fmt.Sprintf("already on record and active (generation %d); forget it first to import over it", prev.Generation)}, nil
			}
		}
		base := &record{AppID: appid, Family: e.family, State: StateActive, RefreshToken: refreshToken, RefreshExpiry: refreshExpiry}
		if prev != nil {
			base.Generation, base.AuthorizedAt, base.Permissions, base.ForcedAt = prev.Generation, prev.AuthorizedAt, prev.Permissions, prev.ForcedAt
		}
		result := "imported"
		next, err := e.refreshLocked(octx, base)
		if isRefreshTokenDead(err) {
			result = "recovered"
			next, err = e.recoverLocked(octx, base)
		}
		if err != nil {
			return nil, err
		}
		next.LastCode = fp
		if prev != nil && prev.LastEventAt.After(next.LastEventAt) {
			next.LastEventAt = prev.LastEventAt
		}
		if t := e.localEventTime(); t.After(next.LastEventAt) {
			next.LastEventAt = t // the platform just accepted this authorization's token
		}
		e.commitLocked(octx, s, next)
		e.log.Info("legacy refresh token imported", zapApp(appid), zap.String("result", result))
		info := infoOf(next)
		return ImportResult{Result: result, Info: &info}, nil
	})
	if err != nil {
		res := ImportResult{AppID: appid, Result: "failed", Detail: err.Error()}
		if tag.unconfirmed.Load() {
			e.dropEmptySlot(appid)
			res.AppID, res.Fingerprint, res.Detail = "", Secret(appid).Fingerprint(), WithoutAppID(err, appid).Error()
		}
		return res
	}
	r := v.(ImportResult)
	r.AppID = appid
	return r
}

// ComponentInfo is what may be shown of the component: its ticket, its token,
// and what the last sweep of its authorizers found.
type ComponentInfo struct {
	ComponentAppID   string    `json:"component_appid"`
	Family           Family    `json:"family"`
	TicketReceivedAt time.Time `json:"ticket_received_at,omitzero"`
	TicketCreatedAt  time.Time `json:"ticket_create_time,omitzero"`
	TicketAgeSeconds float64   `json:"ticket_age_seconds,omitempty"`
	TokenExpiry      time.Time `json:"component_token_expiry,omitzero"`
	TokenGeneration  uint64    `json:"component_token_generation,omitempty"`
	// Sweep is what the last sweep of storage found (nil before the first).
	Sweep *Summary `json:"sweep,omitempty"`
	// Rebuild is the rebuild running on this instance (a "running" event), if any.
	Rebuild *RebuildEvent `json:"rebuild,omitempty"`
}

// ComponentInfo reports ticket and component-token state (storage first) and
// the last sweep (memory).
func (e *Engine) ComponentInfo(ctx context.Context) ComponentInfo {
	ci := ComponentInfo{ComponentAppID: e.cfg.ComponentAppID, Family: e.family, Rebuild: e.rebuildStatus()}
	if s := e.summary.Load(); s != nil {
		sum := *s
		ci.Sweep = &sum
	}
	t := e.ticket.Load()
	if stored, err := e.loadTicket(ctx); err == nil && (t == nil || stored.ReceivedAt.After(t.ReceivedAt)) {
		t = stored
	}
	if t != nil {
		ci.TicketReceivedAt, ci.TicketCreatedAt = t.ReceivedAt, t.CreateTime
		ci.TicketAgeSeconds = e.now().Sub(t.ReceivedAt).Seconds()
	}
	en := e.comp.cur.Load()
	if r, err := e.comp.load(ctx); err == nil && (en == nil || en.rec == nil || r.Generation > en.rec.Generation) {
		en = e.comp.newEntry(r, e.now())
	}
	if en != nil && en.rec != nil {
		ci.TokenExpiry, ci.TokenGeneration = en.rec.AccessExpiry, en.rec.Generation
	}
	return ci
}

func rateLimited(appid string, wait time.Duration) error {
	return &Error{Kind: KindRateLimited, AppID: appid, RetryAfter: wait,
		Msg: fmt.Sprintf("at most %d forced refreshes or recoveries per authorizer in %s (counted across all instances); try again in %s",
			forcedMax, forcedWindow, wait.Round(time.Second))}
}
