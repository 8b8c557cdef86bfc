package tokensource

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"

	"go.uber.org/zap"
)

// Memory is a backup of storage. An instance holds the records of the
// authorizers it serves in memory; when storage loses them (a storage wiped
// or replaced, Redis restarted without persistence) or goes back in time (an
// old backup restored under running instances), the record in memory is the
// only copy of a live refresh token. So an active record in memory is kept,
// marked unsaved, and written back (flushLocked, under the authorizer's
// lock, on the record reloaded there) when storage holds:
//   - no record of the authorizer, unless an operator deleted it (Forget
//     leaves a marker for that); or
//   - an older record of the same chain (a lower generation).
//
// A chain is the token pair an exchange started and the refreshes that
// followed it: an exchange (a new authorization, a recovery, a rebuild) kills
// the family's previous chain on the platform, so a record of another chain
// in storage is always the one to keep, whatever the generations say.

// newChainID names a new token chain.
func newChainID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// memoryNewer reports whether mem, a record this instance holds, is newer
// than stored (nil: storage has none): stored must be of the same chain, or
// of an unnamed one (a record written before chains were named), and older.
func memoryNewer(mem, stored *record) bool {
	if stored == nil {
		return true
	}
	if stored.Chain != "" && mem.Chain != "" && stored.Chain != mem.Chain {
		return false
	}
	return stored.Generation < mem.Generation
}

// keepsMemory reports whether adopt keeps old rather than installing rec:
// old is unsaved (a failed write) or a live chain of this family, and newer.
func (e *Engine) keepsMemory(old *entry, rec *record) bool {
	if old == nil || old.rec == nil || !memoryNewer(old.rec, rec) {
		return false
	}
	live := old.rec.State == StateActive && old.rec.Family == e.family && old.rec.RefreshToken != ""
	return old.dirty || live
}

// diskForgotten marks a record an operator deleted (Forget), so that no
// instance writes back the copy it holds in memory: the chain it held.
type diskForgotten struct {
	Chain      string    `json:"chain,omitempty"`
	Generation uint64    `json:"generation"`
	At         time.Time `json:"at"`
}

func (k keys) forgottenDir() string { return k.prefix + "/forgotten" }

func (k keys) forgotten(appid string) string { return k.prefix + "/forgotten/" + appid + ".json" }

// forgottenMemory is how long a Forget marker is kept: instances reload a
// record they serve every SyncInterval and drop an idle one after an hour, so
// after a day none still holds the deleted one.
const forgottenMemory = 24 * time.Hour

// markForgotten records that an operator deletes rec. The storage lock of
// rec's appid is held.
func (e *Engine) markForgotten(ctx context.Context, rec *record) error {
	key := e.keys.forgotten(rec.AppID)
	b, err := e.codec.encode(key, diskForgotten{Chain: rec.Chain, Generation: rec.Generation, At: e.now()})
	if err != nil {
		return err
	}
	return e.store.Store(ctx, key, b)
}

// wasForgotten reports whether an operator deleted the chain of mem (a
// storage failure counts as yes: the write-back waits for a clear answer).
func (e *Engine) wasForgotten(ctx context.Context, mem *record) bool {
	key := e.keys.forgotten(mem.AppID)
	b, err := e.store.Load(ctx, key)
	if isNotExist(err) {
		return false
	}
	var d diskForgotten
	if err != nil || e.codec.decode(key, b, &d) != nil {
		return true
	}
	return d.Chain == "" || mem.Chain == "" || d.Chain == mem.Chain
}

// forgetOldMarkers deletes Forget markers older than forgottenMemory.
func (e *Engine) forgetOldMarkers(ctx context.Context) {
	forgetExpired(ctx, e, e.keys.forgottenDir(), func(d diskForgotten) bool { return e.now().Sub(d.At) > forgottenMemory })
}

// writeBackShared restores the ticket and the component token this instance
// holds when storage lost them: without them an instance that holds neither
// (one started since, or one that never needed them) can make no platform
// call until the next ticket push, up to 10 minutes away. Run calls it every
// MaintainInterval: one storage read each time, a write only when missing.
func (e *Engine) writeBackShared(ctx context.Context) {
	if t := e.ticket.Load(); t != nil {
		if _, err := e.store.Load(ctx, e.keys.ticket()); isNotExist(err) {
			e.writeBackTicket(ctx, t)
		}
	}
	e.comp.writeBack(ctx)
}

// writeBack restores the token this instance holds when storage lost it, so
// that an instance without it sends the same token instead of fetching one
// (a fetch cuts the previous token's life). Under the lock: an instance
// fetching a new one now must not see it replaced by this one.
func (s *single) writeBack(ctx context.Context) {
	en := s.cur.Load()
	if en == nil || en.rec == nil || !en.usable(s.now()) {
		return
	}
	if _, err := s.load(ctx); !isNotExist(err) {
		return
	}
	release, err := s.acquire(ctx, s.lock)
	if err != nil {
		return
	}
	defer release()
	if _, err := s.load(ctx); !isNotExist(err) {
		return
	}
	if err := s.save(ctx, en.rec); err != nil {
		s.log.Warn(s.what+" is missing from storage and writing back the one in memory failed", s.subjectField(), zapErr(err))
		return
	}
	s.log.Warn(s.what+" was missing from storage: wrote back the one this instance holds", s.subjectField(), zap.Time("expiry", en.rec.AccessExpiry))
}

// writeBackTicket stores the ticket this instance holds when storage has none
// (storage lost): an instance started meanwhile needs it to get a component
// token, and the next push is up to 10 minutes away.
func (e *Engine) writeBackTicket(ctx context.Context, t *diskTicket) {
	key := e.keys.ticket()
	b, err := e.codec.encode(key, t)
	if err == nil {
		err = e.store.Store(ctx, key, b)
	}
	if err != nil {
		e.log.Warn("the component ticket is missing from storage and writing back the one in memory failed", zapErr(err))
		return
	}
	e.log.Warn("the component ticket was missing from storage: wrote back the one this instance holds", zap.Time("received_at", t.ReceivedAt))
}
