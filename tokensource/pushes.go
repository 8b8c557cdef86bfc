package tokensource

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

// How a push changes the engine's state: HandlePush is the one entry point for
// a push the caller opened (push.Crypto.Open verified and decrypted it).
//
//   - Freshness and replays. A verified push proves it came from the platform,
//     not when: captured, it could be sent again at any time. So a push is acted
//     on only while its signed TimeStamp is within PushWindow of this
//     instance's clock, and only once: the deliveries handled are remembered, in
//     memory and in storage (every instance behind the push URL shares them),
//     until their TimeStamp leaves the window. A second delivery of a handled
//     push (a platform retry whose "success" got lost, or a replay) is
//     acknowledged without acting (docs/protocol.md, section "Pushes: time
//     window and replays").
//   - A ticket is stored for every instance (storeTicket); an older ticket
//     never replaces a newer one.
//   - AUTHORIZED and UPDATE_AUTHORIZED exchange their code at once (exchange.go),
//     under the authorizer's lock; a code already exchanged is not sent again.
//   - UNAUTHORIZED marks the authorizer unauthorized and forgets its tokens
//     (unauthorize): requests then fail at once, without a platform call.
//   - Authorization events are ordered by their EventTime: one older than the
//     last applied to the authorizer (LastEventAt, which local authorizations
//     also stamp) changes nothing.
//   - A push whose action failed for a reason a retry can fix is not
//     remembered, so the platform's retry acts again; any other outcome is.

// ErrPushStale: the push's TimeStamp is outside the accepted window.
var ErrPushStale = errors.New("push: TimeStamp outside the accepted window")

// HandlePush applies a verified push to the engine's state. It returns:
//   - duplicate true for a push already handled: answer it as handled;
//   - an error wrapping ErrPushStale for a push stamped outside PushWindow, or
//     an *Error of KindBadInput for an authorization event without a valid
//     AppId or code: refuse it (4xx), nothing changed;
//   - another error when the push was not handled for a reason a retry can fix
//     (storage or platform unavailable): answer with an error so that the
//     platform retries it;
//   - nil otherwise, including a push whose action failed for good (an expired
//     code): that failure is logged, and retrying could not help.
func (e *Engine) HandlePush(ctx context.Context, m *push.Message) (duplicate bool, err error) {
	// An operation in flight: Close waits for it to finish its writes.
	done, err := e.beginUnbounded()
	if err != nil {
		return false, err
	}
	defer done()
	duplicate, err = e.admitPush(ctx, m)
	if err != nil || duplicate {
		return duplicate, err
	}
	log := e.log.With(zap.String("event", m.Kind.String()), zap.String("push_id", m.ID))
	switch m.Kind {
	case push.Ticket:
		err = e.storeTicket(ctx, m.Ticket, m.CreateTime)
	case push.Authorized, push.UpdateAuthorized:
		if !ValidAppID(m.AppID) || m.AuthorizationCode == "" {
			return false, &Error{Kind: KindBadInput, Msg: "authorization event lacks AppId or AuthorizationCode"}
		}
		log = log.With(zapApp(m.AppID))
		_, err = e.exchangeCode(ctx, m.AppID, m.AuthorizationCode, m.EventTime)
	case push.Unauthorized:
		if !ValidAppID(m.AppID) {
			return false, &Error{Kind: KindBadInput, Msg: "UNAUTHORIZED event lacks a valid AppId"}
		}
		log = log.With(zapApp(m.AppID))
		err = e.unauthorize(ctx, m.AppID, m.EventTime)
	default:
		log.Info("push of an unhandled kind acknowledged", zap.String("event_field", m.Event), zap.String("msg_type", m.MsgType))
	}
	switch {
	case err != nil && retryable(err):
		return false, err
	case err != nil:
		log.Error("push handled with an error that a retry cannot fix", zapErr(err))
	default:
		log.Info("push handled")
	}
	e.pushHandled(ctx, m)
	return false, nil
}

// retryable: a push that failed so is not remembered, and its retry acts again.
func retryable(err error) bool {
	switch KindOf(err) {
	case KindUnavailable, KindTimeout, KindNoTicket, KindInternal:
		return true
	}
	return false
}

// pushesKept bounds the in-memory replay memory; storage keeps the rest.
const pushesKept = 4096

// diskPush is the stored memory of a handled push.
type diskPush struct {
	HandledAt time.Time `json:"handled_at"`
	Until     time.Time `json:"until"` // after this its TimeStamp is outside the window anyway
}

func (k keys) pushDir() string { return k.prefix + "/pushes" }

func (k keys) push(id string) string { return k.prefix + "/pushes/" + id + ".json" }

// admitPush decides whether a verified push may be acted on. It returns an
// error wrapping ErrPushStale for a push stamped outside the window, and
// duplicate for a push already handled (answer it as handled, do nothing).
// Storage trouble is not a refusal: the push is then acted on (its actions
// are idempotent), and the trouble is logged.
func (e *Engine) admitPush(ctx context.Context, m *push.Message) (duplicate bool, err error) {
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

// pushHandled remembers a push that was acted on (or acknowledged for good), so
// that a second delivery is not acted on again, until its TimeStamp has left
// the window (plus a minute of clock skew between instances).
func (e *Engine) pushHandled(ctx context.Context, m *push.Message) {
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
	n := forgetExpired(ctx, e, e.keys.pushDir(), func(d diskPush) bool { return !e.now().Before(d.Until) })
	if n > 0 {
		e.log.Debug("forgot handled pushes outside the window", zap.Int("count", n))
	}
}

// storeTicket keeps the latest component_ticket in storage, shared by every
// instance. Pushes are retried by the platform, so a ticket already stored is a
// no-op, and an older ticket never replaces a newer one.
func (e *Engine) storeTicket(ctx context.Context, ticket Secret, created time.Time) error {
	if ticket == "" {
		return &Error{Kind: KindBadInput, Msg: "empty component_ticket"}
	}
	if cur := e.ticket.Load(); cur != nil && cur.Ticket == ticket.Reveal() {
		return nil
	}
	stored, err := e.loadTicket(ctx)
	if err != nil && !isNotExist(err) {
		e.log.Warn("reading the stored component ticket failed; storing the pushed one", zapErr(err))
	}
	if stored != nil {
		if stored.Ticket == ticket.Reveal() {
			e.ticket.Store(stored)
			return nil
		}
		if !created.IsZero() && stored.CreateTime.After(created) {
			e.ticket.Store(stored)
			return nil
		}
	}
	d := &diskTicket{Ticket: ticket.Reveal(), CreateTime: created, ReceivedAt: e.now()}
	e.ticket.Store(d)
	key := e.keys.ticket()
	b, err := e.codec.encode(key, d)
	if err != nil {
		return err
	}
	for n := 0; ; n++ {
		if err = e.store.Store(ctx, key, b); err == nil {
			e.log.Info("component ticket stored", zap.Time("create_time", created))
			return nil
		}
		if n == 2 || sleep(ctx, time.Duration(100<<n)*time.Millisecond) != nil {
			e.log.Error("storing the component ticket failed; other instances will not see it", zapErr(err))
			return err
		}
	}
}

// unauthorize marks the authorizer unauthorized (an UNAUTHORIZED push) and
// forgets its tokens: requests then fail at once, with no platform call, until a
// new code arrives. An event older than the last one applied is ignored.
func (e *Engine) unauthorize(ctx context.Context, appid string, eventAt time.Time) error {
	if err := CheckAppID(appid); err != nil {
		return err
	}
	_, err := e.locked(ctx, "\x00unauth:", appid, "record the revocation", func(octx context.Context, s *slot, prev *record) (any, error) {
		now := e.now()
		next := &record{AppID: appid, Family: e.family}
		if prev != nil {
			if !eventAt.IsZero() && eventAt.Before(prev.LastEventAt) {
				e.log.Info("ignoring an UNAUTHORIZED push older than the last authorization", zapApp(appid))
				return nil, nil
			}
			if prev.State == StateUnauthorized {
				return nil, nil
			}
			next = prev.clone()
		}
		next.State = StateUnauthorized
		next.AccessToken, next.RefreshToken = "", ""
		next.AccessExpiry, next.RefreshExpiry = time.Time{}, time.Time{}
		next.UpdatedAt = now
		if eventAt.After(next.LastEventAt) {
			next.LastEventAt = eventAt
		}
		next.Generation++
		if err := e.saveRecord(octx, next); err != nil {
			// Still stop using it here; the next push retry stores it.
			s.cur.Store(e.newEntry(next, now))
			return nil, &Error{Kind: KindUnavailable, AppID: appid, Msg: "storing the revocation failed", RetryAfter: 5 * time.Second, Err: err}
		}
		s.cur.Store(e.newEntry(next, now))
		e.log.Warn("authorizer unauthorized", zapApp(appid))
		return nil, nil
	})
	return err
}
