package tokensource

import (
	"context"
	"errors"
	"math"
	"time"

	"golang.org/x/time/rate"
)

// Exchanges started by the authorization redirect. The redirect is the one way
// for anyone on the internet to start a platform call (a push is acted on only
// once its signature verifies), so what it starts never shares anything
// refreshes need: it runs on call slots of its own (RedirectCalls) under a rate
// of its own (RedirectExchanges per RedirectWindow), one attempt per code, and
// only after the answers that cost no platform call were tried: a code of the
// wrong shape, a code that failed a moment ago, a code already exchanged (the
// code index: the AUTHORIZED push usually exchanged it first).

// Sentinels of a refused redirect exchange; match them with errors.Is. Each
// comes inside an *Error whose message tells the merchant what to do.
var (
	// ErrCodeMalformed: the value cannot be a platform authorization code.
	ErrCodeMalformed = errors.New("not an authorization code")
	// ErrCodeFailedRecently: the same code failed a moment ago; it is not sent again for a while.
	ErrCodeFailedRecently = errors.New("this code failed a moment ago")
	// ErrRedirectBusy: every redirect call slot is in use.
	ErrRedirectBusy = errors.New("all redirect exchange slots are in use")
	// ErrRedirectRateLimited: the redirect exchange budget is spent for now.
	ErrRedirectRateLimited = errors.New("the redirect exchange budget is spent")
	// ErrRedirectExchangeOff: redirects never start an exchange (RedirectExchanges < 0).
	ErrRedirectExchangeOff = errors.New("redirect exchanges are off")
)

// Bounds of an authorization code as accepted from the redirect.
const (
	minCodeLen = 8
	maxCodeLen = 256
)

// failedCodeMemory is how long a code that failed for good is answered from
// memory; failedCodesKept bounds that memory.
const (
	failedCodeMemory = 10 * time.Minute
	failedCodesKept  = 10000
)

// validAuthorizationCode reports whether s can be a platform authorization
// code. The platform does not document the format (docs/protocol.md, section
// "Authorization codes from the redirect"), so the check is permissive: minCodeLen to maxCodeLen
// letters, digits or any of - . _ ~ + / = @ : *. It keeps junk (blanks,
// control bytes, markup, megabytes) away from the platform, nothing more.
func validAuthorizationCode(s string) bool {
	if len(s) < minCodeLen || len(s) > maxCodeLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/' || c == '=' || c == '@' || c == ':' || c == '*':
		default:
			return false
		}
	}
	return true
}

// redirectGate is what the engine keeps for redirect exchanges.
type redirectGate struct {
	off     bool
	slots   chan struct{}
	limiter *rate.Limiter
	failed  *recentSet[*Error]
}

func newRedirectGate(cfg *Config) redirectGate {
	g := redirectGate{off: cfg.RedirectExchanges < 0, failed: newRecentSet[*Error](failedCodesKept)}
	g.slots = make(chan struct{}, cfg.RedirectCalls)
	n := max(cfg.RedirectExchanges, 1)
	g.limiter = rate.NewLimiter(rate.Limit(float64(n)/cfg.RedirectWindow.Seconds()), n)
	return g
}

// redirectCall marks the context of an exchange started by a redirect: its
// platform calls run on the slot the exchange holds, once (see call, retry).
type redirectCall struct{}

func fromRedirect(ctx context.Context) bool { return ctx.Value(redirectCall{}) != nil }

// ExchangeRedirectCode exchanges the code of an authorization redirect, which
// anyone can send: it is answered without a platform call when it can be (a
// malformed code, a code that failed a moment ago, a code already exchanged),
// and otherwise exchanged within the redirect budget (see Config.RedirectCalls
// and RedirectExchanges), never taking a call slot that refreshes use.
// Refusals are *Errors wrapping one of the sentinels above.
func (e *Engine) ExchangeRedirectCode(ctx context.Context, code Secret) (Info, error) {
	if !validAuthorizationCode(code.Reveal()) {
		return Info{}, &Error{Kind: KindBadInput, Err: ErrCodeMalformed,
			Msg: "authorization_code is not an authorization code: open the link you were given again"}
	}
	fp := code.Fingerprint()
	if failed, ok := e.redirect.failed.get(fp, e.now()); ok {
		return Info{}, &Error{Kind: failed.Kind, AppID: failed.AppID, Msg: failed.Msg, Err: ErrCodeFailedRecently}
	}
	if appid, ok := e.lookupCode(ctx, fp); ok {
		if info, err := e.Info(ctx, appid); err == nil {
			return info, nil
		}
	}
	if e.redirect.off {
		return Info{}, &Error{Kind: KindUnavailable, RetryAfter: 5 * time.Second, Err: ErrRedirectExchangeOff,
			Msg: "the platform's notification completes this authorization: reload this page in a few seconds"}
	}
	v, err := e.await(ctx, codeKey(fp), func() (any, error) {
		release, err := e.admitRedirect()
		if err != nil {
			return nil, err
		}
		defer release()
		return e.exchange("", code, time.Time{}, true)
	})
	if err != nil {
		var ee *Error
		if errors.As(err, &ee) && (ee.Kind == KindPlatform || ee.Kind == KindUnauthorized) {
			e.redirect.failed.put(fp, ee, e.now().Add(failedCodeMemory), e.now())
		}
		return Info{}, err
	}
	return v.(Info), nil
}

// admitRedirect takes a redirect call slot and a unit of the redirect rate,
// without waiting: a flood is refused at once rather than queued.
func (e *Engine) admitRedirect() (release func(), err error) {
	select {
	case e.redirect.slots <- struct{}{}:
	default:
		return nil, &Error{Kind: KindUnavailable, RetryAfter: 2 * time.Second, Err: ErrRedirectBusy,
			Msg: "many authorizations are being completed right now: reload this page in a few seconds"}
	}
	now := e.now()
	r := e.redirect.limiter.ReserveN(now, 1)
	if d := r.DelayFrom(now); !r.OK() || d > 0 {
		r.CancelAt(now)
		<-e.redirect.slots
		wait := time.Duration(math.Ceil(max(d, time.Second).Seconds())) * time.Second
		return nil, &Error{Kind: KindUnavailable, RetryAfter: wait, Err: ErrRedirectRateLimited,
			Msg: "many authorizations are being completed right now: reload this page in a little while"}
	}
	return func() { <-e.redirect.slots }, nil
}

// isRedirectRefusal: err is a redirect's refusal, which a trusted caller that
// happened to join the redirect's exchange of the same code must not inherit.
func isRedirectRefusal(err error) bool {
	return errors.Is(err, ErrRedirectBusy) || errors.Is(err, ErrRedirectRateLimited)
}

func codeKey(fp string) string { return "\x00code:" + fp }
