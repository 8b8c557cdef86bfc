package tokensource

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Push freshness and replays. A verified push proves it came from the platform,
// not when: captured, it could be sent again at any time. So a push is acted on
// only while its signed TimeStamp is within PushWindow of this instance's clock,
// and only once: the deliveries handled are remembered, in memory and in
// storage (every instance behind the push URL shares them), until their
// TimeStamp leaves the window. A second delivery of a handled push (a platform
// retry whose "success" got lost, or a replay) is acknowledged without acting.
// See docs/protocol.md, section "Pushes: time window and replays".

// ErrPushStale: the push's TimeStamp is outside the accepted window.
var ErrPushStale = errors.New("push: TimeStamp outside the accepted window")

// pushesKept bounds the in-memory replay memory; storage keeps the rest.
const pushesKept = 4096

// diskPush is the stored memory of a handled push.
type diskPush struct {
	HandledAt time.Time `json:"handled_at"`
	Until     time.Time `json:"until"` // after this its TimeStamp is outside the window anyway
}

func (k keys) pushDir() string       { return k.prefix + "/pushes" }
func (k keys) push(id string) string { return k.prefix + "/pushes/" + id + ".json" }

// AdmitPush decides whether a verified push may be acted on. It returns an
// error wrapping ErrPushStale for a push stamped outside the window, and
// duplicate for a push already handled (answer it as handled, do nothing).
// Storage trouble is not a refusal: the push is then acted on (its actions
// are idempotent), and the trouble is logged.
func (e *Engine) AdmitPush(ctx context.Context, m *PushMessage) (duplicate bool, err error) {
	now := e.now()
	w := e.cfg.PushWindow
	if d := now.Sub(m.Timestamp); d > w || d < -w {
		return false, fmt.Errorf("%w: stamped %s, %s from this instance's clock (accepted: ±%s); a replay, or a clock that is off",
			ErrPushStale, m.Timestamp.UTC().Format(time.RFC3339), d.Round(time.Second), w)
	}
	if _, ok := e.pushes.get(m.ID, now); ok {
		return true, nil
	}
	key := e.keys.push(m.ID)
	b, err := e.store.Load(ctx, key)
	switch {
	case err == nil:
		var d diskPush
		if e.codec.decode(key, b, &d) == nil && now.Before(d.Until) {
			e.pushes.put(m.ID, d.Until, d.Until, now)
			return true, nil
		}
	case !isNotExist(err):
		e.log.Warn("reading the replay memory of pushes failed; acting on the push", zapErr(err))
	}
	return false, nil
}

// PushHandled remembers a push that was acted on (or acknowledged for good), so
// that a second delivery is not acted on again.
func (e *Engine) PushHandled(ctx context.Context, m *PushMessage) {
	now := e.now()
	until := m.Timestamp.Add(e.cfg.PushWindow + time.Minute)
	e.pushes.put(m.ID, until, until, now)
	key := e.keys.push(m.ID)
	b, err := e.codec.encode(key, diskPush{HandledAt: now, Until: until})
	if err == nil {
		err = e.store.Store(ctx, key, b)
	}
	if err != nil {
		e.log.Warn("remembering a handled push failed: other instances may act on a second delivery of it", zapErr(err))
	}
}

// forgetOldPushes deletes the stored memory of pushes outside the window.
func (e *Engine) forgetOldPushes(ctx context.Context) {
	list, err := e.store.List(ctx, e.keys.pushDir(), false)
	if err != nil {
		return
	}
	n := 0
	for _, key := range list {
		b, err := e.store.Load(ctx, key)
		if err != nil {
			continue
		}
		var d diskPush
		if e.codec.decode(key, b, &d) != nil || !e.now().Before(d.Until) {
			if e.store.Delete(ctx, key) == nil {
				n++
			}
		}
	}
	if n > 0 {
		e.log.Debug("forgot handled pushes outside the window", zap.Int("count", n))
	}
}
