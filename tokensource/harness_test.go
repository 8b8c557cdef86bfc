package tokensource_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

const (
	testComponent = "tt0000component"
	testSecret    = "component-secret-value-0001"
	testMsgToken  = "message-token-0001"
	testAESKey    = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
)

// fakeClock is shared by the emulator and the engines, so lifetimes can be
// crossed without waiting.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// harness is one emulated platform, one storage folder, and engines
// ("instances") on it.
type harness struct {
	t      testing.TB
	family tokensource.Family
	clock  *fakeClock
	emu    *emulator.Emulator
	srv    *httptest.Server
	dir    string
	logs   *observer.ObservedLogs
	logger *zap.Logger

	deliveries atomic.Int64 // pushes delivered (deliver)
}

func newHarness(t testing.TB, family tokensource.Family) *harness {
	t.Helper()
	h := &harness{t: t, family: family, clock: &fakeClock{t: time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)}, dir: t.TempDir()}
	core, logs := observer.New(zapcore.DebugLevel)
	h.logs, h.logger = logs, zap.New(core)
	emu, err := emulator.New(emulator.Config{
		ComponentAppID: testComponent, ComponentAppSecret: testSecret,
		MessageToken: testMsgToken, EncodingAESKey: testAESKey,
		Now: h.clock.Now, Seed: 7,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.emu = emu
	h.srv = httptest.NewServer(emu)
	t.Cleanup(func() {
		h.srv.Close()
		_ = emu.Close()
	})
	if err := emu.PushTicket(context.Background()); err != nil {
		t.Fatal(err)
	}
	return h
}

// store is a fresh FileStorage object on the shared folder: engines built with
// different objects share nothing in memory, like separate processes.
func (h *harness) store() *certmagic.FileStorage { return &certmagic.FileStorage{Path: h.dir} }

type engineOpt func(*tokensource.Config)

// engine builds an instance with the ticket already received.
func (h *harness) engine(opts ...engineOpt) *tokensource.Engine {
	h.t.Helper()
	return h.start(tokensource.Config{Endpoint: h.srv.URL, CallTimeout: 5 * time.Second,
		Logger: h.logger, LockTimeout: 20 * time.Second}, opts)
}

// start completes cfg (the harness's component and family, a fresh storage
// object on the shared folder, the fake clock, short retries), applies opts,
// builds the engine (closed at cleanup) and gives it the current ticket.
func (h *harness) start(cfg tokensource.Config, opts []engineOpt) *tokensource.Engine {
	h.t.Helper()
	cfg.ComponentAppID, cfg.ComponentSecret, cfg.Family = testComponent, testSecret, h.family
	cfg.Store, cfg.Now = h.store(), h.clock.Now
	cfg.RetryBase, cfg.RetryMax = 5*time.Millisecond, 50*time.Millisecond
	for _, o := range opts {
		o(&cfg)
	}
	e, err := tokensource.New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = e.Close() })
	if err := h.deliver(e, push.Message{Kind: push.Ticket, Ticket: tokensource.Secret(h.emu.Ticket()), CreateTime: h.clock.Now()}); err != nil {
		h.t.Fatal(err)
	}
	return e
}

// deliver has e handle m as a push delivered now, each call a new delivery
// (its own ID), as the platform's push would after push.Crypto.Open.
func (h *harness) deliver(e *tokensource.Engine, m push.Message) error {
	h.t.Helper()
	m.Timestamp, m.ID = h.clock.Now(), fmt.Sprintf("delivery-%d", h.deliveries.Add(1))
	dup, err := e.HandlePush(context.Background(), &m)
	if dup {
		h.t.Fatalf("delivery %s taken for a second delivery", m.ID)
	}
	return err
}

// authorize authorizes appid on the platform and exchanges its code in e.
func (h *harness) authorize(e *tokensource.Engine, appid string) tokensource.Info {
	h.t.Helper()
	code, err := h.emu.Authorize(appid, false)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := e.ExchangeCode(context.Background(), appid, tokensource.Secret(code))
	if err != nil {
		h.t.Fatalf("exchange %s: %v", appid, err)
	}
	return info
}

// downstream calls the family's sample API with tok, as reverse_proxy would
// after injection, and returns the appid owning the token (or the error code).
func (h *harness) downstream(tok tokensource.Token) (owner string, code int) {
	h.t.Helper()
	var req *http.Request
	if h.family == tokensource.V2 {
		req, _ = http.NewRequest(http.MethodGet, h.srv.URL+"/api/apps/v2/basic_info/get_info/", nil)
		req.Header.Set("access-token", tok.Value.Reveal())
	} else {
		req, _ = http.NewRequest(http.MethodGet, h.srv.URL+"/openapi/v1/microapp/app/info?component_appid="+testComponent+
			"&authorizer_access_token="+tok.Value.Reveal(), nil)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Errno int `json:"errno"`
		ErrNo int `json:"err_no"`
		Data  struct {
			AppID string `json:"appid"`
		} `json:"data"`
	}
	if err := decodeJSON(resp, &body); err != nil {
		h.t.Fatal(err)
	}
	return body.Data.AppID, body.Errno + body.ErrNo
}

// assertNoSecretsLogged fails if any captured log line holds a value the
// emulator issued (tokens, refresh tokens, tickets, codes) or a configured secret.
func (h *harness) assertNoSecretsLogged() {
	h.t.Helper()
	secrets := append(h.emu.IssuedSecrets(), testSecret, testMsgToken, testAESKey)
	for _, entry := range h.logs.All() {
		line := entry.Message
		enc := zapcore.NewMapObjectEncoder()
		for _, f := range entry.Context {
			f.AddTo(enc)
		}
		for k, v := range enc.Fields {
			line += " " + k + "=" + toString(v)
		}
		for _, s := range secrets {
			if s != "" && strings.Contains(line, s) {
				h.t.Errorf("log line leaks a secret: %q", entry.Message)
			}
		}
	}
	if h.logs.Len() == 0 {
		h.t.Error("no log line captured: the leak check checked nothing")
	}
}

var families = []tokensource.Family{tokensource.V1, tokensource.V2}

func forEachFamily(t *testing.T, f func(t *testing.T, h *harness)) {
	for _, fam := range families {
		t.Run(string(fam), func(t *testing.T) { f(t, newHarness(t, fam)) })
	}
}

// expire moves time past the refresh point of a 2h access token.
func (h *harness) expire() { h.clock.Advance(2*time.Hour - 5*time.Minute) }

func logged(h *harness, substr string) bool {
	for _, e := range h.logs.All() {
		if strings.Contains(e.Message, substr) {
			return true
		}
	}
	return false
}

func loggedAtError(h *harness, substr string) bool {
	for _, e := range h.logs.All() {
		if e.Level >= 2 /* error */ && strings.Contains(e.Message, substr) {
			return true
		}
	}
	return false
}

func mustComponent(t *testing.T, e *tokensource.Engine) tokensource.Token {
	t.Helper()
	tok, err := e.ComponentToken(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func equalCounts(a, b map[string]int64) bool {
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return len(a) == len(b)
}

func decodeJSON(resp *http.Response, v any) error {
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decoding %q: %w", b, err)
	}
	return nil
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
