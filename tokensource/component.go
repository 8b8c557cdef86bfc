package tokensource

import (
	"context"
	"time"

	"go.uber.org/zap"
)

const componentKey = "\x00component"

func (e *Engine) loadTicket(ctx context.Context) (*diskTicket, error) {
	key := e.keys.ticket()
	b, err := e.store.Load(ctx, key)
	if err != nil {
		return nil, err
	}
	var d diskTicket
	if err := e.codec.decode(key, b, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// currentTicket is the newest ticket known: storage first (another instance may
// have received the latest push), memory if storage fails.
func (e *Engine) currentTicket(ctx context.Context) (Secret, error) {
	mem := e.ticket.Load()
	stored, err := e.loadTicket(ctx)
	switch {
	case err == nil:
		if mem == nil || !stored.ReceivedAt.Before(mem.ReceivedAt) || stored.CreateTime.After(mem.CreateTime) {
			e.ticket.Store(stored)
			mem = stored
		}
	case !isNotExist(err):
		e.log.Error("reading the stored component ticket failed", zapErr(err))
	case mem != nil:
		e.writeBackTicket(ctx, mem)
	}
	if mem == nil {
		return "", &Error{Kind: KindNoTicket, RetryAfter: 30 * time.Second,
			Msg: "no component_ticket received yet: the platform pushes one every 10 minutes to the 授权事件接收 URL, which must reach tptoken_events"}
	}
	if age := e.now().Sub(mem.ReceivedAt); age > ticketStaleAfter {
		e.log.Warn("the newest component ticket is older than 3 hours: pushes are not arriving", zap.Duration("age", age))
	}
	return Secret(mem.Ticket), nil
}

// newComponentToken is the engine's component token: a single token
// fetched with the newest ticket. v2 fetches invalidate the previous token
// after a grace, so they are serialized cluster-wide; v1 ones do not, so a v1
// fetch may go on without the storage lock.
func (e *Engine) newComponentToken() *single {
	return &single{
		base: e.base, what: "the component token", sfKey: componentKey, family: e.family,
		key: e.keys.componentToken(e.family), lock: e.keys.componentTokenLock(e.family),
		ahead: componentRefreshAhead, syncInterval: e.cfg.SyncInterval, lockless: e.family == V1,
		fetch: func(ctx context.Context) (func(context.Context) (Secret, time.Duration, error), error) {
			ticket, err := e.currentTicket(ctx)
			if err != nil {
				return nil, err
			}
			return func(ctx context.Context) (Secret, time.Duration, error) {
				ct, err := e.client.ComponentToken(ctx, ticket)
				return ct.Token, ct.ExpiresIn, err
			}, nil
		},
		logCall: func(t0 time.Time, err error) { e.logCall(OpComponentToken, "", t0, err) },
		failure: func(cause error, retryAfter time.Duration) error {
			if c := platformCode(cause); c == 40037 || c == 40038 || c == 40003 {
				return &Error{Kind: KindPlatform, Msg: "the platform refused the component credentials (40037 ticket, 40038 secret, 40003 appid): check component_appid, component_appsecret and that tickets arrive", RetryAfter: retryAfter, Err: cause}
			}
			return e.unavailable("", cause, retryAfter)
		},
	}
}

// ComponentToken returns a valid component_access_token (for TP-level APIs).
func (e *Engine) ComponentToken(ctx context.Context) (Token, error) { return e.comp.token(ctx) }

// componentToken is ComponentToken for the engine's own calls.
func (e *Engine) componentToken(ctx context.Context) (Token, error) { return e.comp.token(ctx) }
