package emulator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

// Errors of the push sender and the authorization calls.
var (
	// ErrNoPushURL: a push was requested but no push URL is configured.
	ErrNoPushURL = errors.New("emulator: no push_url configured")
	// ErrUnknownAuthorizer: the appid was never authorized.
	ErrUnknownAuthorizer = errors.New("emulator: unknown authorizer appid")
	// ErrPushRejected: the receiver did not answer HTTP 200 with the exact body "success".
	ErrPushRejected = errors.New("emulator: push not acknowledged with \"success\"")
)

// ticketPayload is the decrypted ticket push (docs/protocol.md §Pushes).
type ticketPayload struct {
	Ticket       string `json:"Ticket"`
	FromUserName string `json:"FromUserName"`
	CreateTime   string `json:"CreateTime"`
	MsgType      string `json:"MsgType"`
	Event        string `json:"Event"`
}

// authPayload is the decrypted AUTHORIZED / UPDATE_AUTHORIZED / UNAUTHORIZED push.
type authPayload struct {
	AppID                      string `json:"AppId"`
	TpAppID                    string `json:"TpAppId"`
	EventTime                  string `json:"EventTime"`
	Event                      string `json:"Event"`
	AuthorizationCode          string `json:"AuthorizationCode,omitempty"`
	AuthorizationCodeExpiresIn int64  `json:"AuthorizationCodeExpiresIn,omitempty"`
}

// seal encrypts and signs a payload as the platform does. It takes e.mu.
func (e *Emulator) seal(payload any) (body []byte, url string, err error) {
	plain, err := json.Marshal(payload)
	if err != nil {
		return nil, "", err
	}
	e.mu.Lock()
	url = e.pushURL
	nonce := e.nonceLocked()
	ts := strconv.FormatInt(e.now().Unix(), 10)
	e.mu.Unlock()
	if url == "" {
		return nil, "", ErrNoPushURL
	}
	body, err = e.crypto.Seal(plain, ts, nonce) // reads detRand, which takes e.mu
	return body, url, err
}

// post delivers one sealed push; only HTTP 200 with the body "success" counts.
func (e *Emulator) post(ctx context.Context, url, appid, what string, body []byte) error {
	err := func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := e.client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		if resp.StatusCode != http.StatusOK || string(b) != "success" {
			shown := string(b)
			if len(shown) > 64 {
				shown = shown[:64] + "..."
			}
			return fmt.Errorf("%w: HTTP %d %q", ErrPushRejected, resp.StatusCode, shown)
		}
		return nil
	}()
	e.mu.Lock()
	if err != nil {
		e.countLocked(appid, func(k *Counters) { k.PushesFailed++ })
	} else {
		e.countLocked(appid, func(k *Counters) { k.PushesSent++ })
	}
	e.mu.Unlock()
	if err != nil {
		e.log.Warn("push failed", zap.String("push", what), zap.String("appid", appid), zap.Error(err))
		return fmt.Errorf("push %s: %w", what, err)
	}
	e.log.Info("push delivered", zap.String("push", what), zap.String("appid", appid))
	return nil
}

// pushOnce seals and delivers a payload once.
func (e *Emulator) pushOnce(ctx context.Context, appid, what string, payload any) error {
	body, url, err := e.seal(payload)
	if err != nil {
		return fmt.Errorf("push %s: %w", what, err)
	}
	return e.post(ctx, url, appid, what, body)
}

// pushRetrying delivers a payload and, like the platform, retries the same
// message up to 3 times with a doubling backoff.
func (e *Emulator) pushRetrying(ctx context.Context, appid, what string, payload any) error {
	body, url, err := e.seal(payload)
	if err != nil {
		return fmt.Errorf("push %s: %w", what, err)
	}
	e.mu.Lock()
	wait := e.retryBackoff
	e.mu.Unlock()
	for attempt := 0; ; attempt++ {
		err = e.post(ctx, url, appid, what, body)
		if err == nil || attempt == pushRetries {
			return err
		}
		if sleepCtx(ctx, wait) != nil {
			return err
		}
		wait *= 2
	}
}

// goPushRetrying delivers a push in the background (owned by the emulator:
// Close ends and waits for it).
func (e *Emulator) goPushRetrying(appid string, p authPayload) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		_ = e.pushRetrying(e.ctx, appid, p.Event, p)
	}()
}

// Drain starts no more background pushes (those a retrieve or an exchange
// sends) and waits until the ones under way are delivered or out of retries,
// or ctx ends. The receiver is then done with them: a test can stop it and
// remove its storage. Close still ends and waits for anything left.
func (e *Emulator) Drain(ctx context.Context) {
	e.mu.Lock()
	e.closed = true // goPushRetrying adds to e.wg under e.mu, never after this
	e.mu.Unlock()
	done := make(chan struct{})
	go func() {
		e.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// PushTicket mints a new component_ticket (valid TicketTTL) and pushes it once,
// encrypted, expecting the exact answer "success". Without a push URL it only
// mints the ticket (read it with Ticket) and returns nil.
func (e *Emulator) PushTicket(ctx context.Context) error {
	p, ok := e.newTicketPayload()
	if !ok {
		return nil
	}
	return e.pushOnce(ctx, "", "ticket", p)
}

func (e *Emulator) newTicketPayload() (ticketPayload, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	v := e.newTicketLocked(now)
	return ticketPayload{Ticket: v, FromUserName: "ByteDanceMicroApp", CreateTime: push.FormatTime(now),
		MsgType: "Ticket", Event: "PUSH"}, e.pushURL != ""
}

// Authorize (re)authorizes appid and returns a new authorization code (valid
// CodeTTL). With sendPush it also sends the AUTHORIZED push (once, synchronously);
// a failed push returns the code together with the error.
func (e *Emulator) Authorize(appid string, sendPush bool) (string, error) {
	if !tokensource.ValidAppID(appid) {
		return "", fmt.Errorf("emulator: invalid authorizer appid %q", appid)
	}
	e.mu.Lock()
	now := e.now()
	e.authorizeLocked(appid, now)
	v, ttl := e.newCodeLocked(appid, now)
	e.mu.Unlock()
	e.log.Info("authorized", zap.String("appid", appid), zap.Bool("push", sendPush))
	if !sendPush {
		return v, nil
	}
	return v, e.pushOnce(e.ctx, appid, "AUTHORIZED", authPayload{AppID: appid, TpAppID: e.appid,
		EventTime: push.FormatTime(now), Event: "AUTHORIZED", AuthorizationCode: v, AuthorizationCodeExpiresIn: seconds(ttl)})
}

// whyUnauthorized is why the tokens of a revoked authorization died.
const whyUnauthorized = "unauthorized"

// Unauthorize revokes appid's authorization: both families' tokens and its
// unused codes die, refreshes answer 40004, retrieve answers 40022, and
// downstream APIs answer as for a dead token, or Config.UnauthorizedDownstream.
// With sendPush it also sends the UNAUTHORIZED push (once, synchronously).
func (e *Emulator) Unauthorize(appid string, sendPush bool) error {
	e.mu.Lock()
	a := e.auths[appid]
	if a == nil {
		e.mu.Unlock()
		return fmt.Errorf("%w %q", ErrUnknownAuthorizer, appid)
	}
	now := e.now()
	a.authorized = false
	for f, ch := range a.chains {
		e.killLocked(ch.access, whyUnauthorized)
		e.killLocked(ch.refresh, whyUnauthorized)
		delete(a.chains, f)
	}
	for _, cd := range e.codes {
		if cd.appid == appid {
			cd.dead = true
		}
	}
	e.mu.Unlock()
	e.log.Info("unauthorized", zap.String("appid", appid), zap.Bool("push", sendPush))
	if !sendPush {
		return nil
	}
	return e.pushOnce(e.ctx, appid, "UNAUTHORIZED", authPayload{AppID: appid, TpAppID: e.appid,
		EventTime: push.FormatTime(now), Event: "UNAUTHORIZED"})
}

// Run pushes a ticket now and then every TicketInterval (real time), retrying
// a failed push 3 times with a short doubling backoff, until ctx ends or the
// emulator is closed; then it returns. After the first successful ticket push
// it sends the AUTHORIZED pushes of Config.Authorize. Only one Run is active at
// a time: a second concurrent call returns at once.
func (e *Emulator) Run(ctx context.Context) {
	e.mu.Lock()
	if e.running || e.closed {
		e.mu.Unlock()
		return
	}
	e.running = true
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.running = false
		e.mu.Unlock()
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(e.ctx, cancel) // Close ends Run too
	defer stop()

	for {
		if p, ok := e.newTicketPayload(); ok {
			if err := e.pushRetrying(ctx, "", "ticket", p); err == nil {
				e.pushStartAuthorizations(ctx)
			}
		} else {
			e.pushStartAuthorizations(ctx) // nothing to push to: drop the list
		}
		e.mu.Lock()
		d := e.ticketInterval
		e.mu.Unlock()
		if sleepCtx(ctx, d) != nil {
			return
		}
	}
}

// pushStartAuthorizations sends AUTHORIZED with a fresh code for each appid of
// Config.Authorize still authorized, once.
func (e *Emulator) pushStartAuthorizations(ctx context.Context) {
	e.mu.Lock()
	list := e.startAuthorize
	e.startAuthorize = nil
	hasURL := e.pushURL != ""
	e.mu.Unlock()
	if !hasURL {
		return
	}
	for _, appid := range list {
		e.mu.Lock()
		a := e.auths[appid]
		if a == nil || !a.authorized {
			e.mu.Unlock()
			continue
		}
		now := e.now()
		v, ttl := e.newCodeLocked(appid, now)
		e.mu.Unlock()
		_ = e.pushRetrying(ctx, appid, "AUTHORIZED", authPayload{AppID: appid, TpAppID: e.appid,
			EventTime: push.FormatTime(now), Event: "AUTHORIZED", AuthorizationCode: v, AuthorizationCodeExpiresIn: seconds(ttl)})
		if ctx.Err() != nil {
			return
		}
	}
}
