package tptoken

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/internal/testport"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// End-to-end tests run a real Caddy in this process (caddy.Load): one config
// at a time, so they never run in parallel. Caddy talks to an emulated platform
// on loopback through a tap that records what the upstream received.

const (
	e2eComponent = "tt00e2ecomponent"
	e2eSecret    = "e2e-component-secret-0042"
	e2eMsgToken  = "e2e-message-token-0042"
	e2eAESKey    = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
)

type e2e struct {
	t        *testing.T
	family   tokensource.Family
	emu      *emulator.Emulator
	emuURL   string
	tap      *tap
	storage  string
	logFile  string
	proxy    string // base URL of the tptoken site
	events   string // base URL of the tptoken_events site
	site     string // extra site-block lines for the tptoken site, before reverse_proxy
	handler  string // the tptoken handler block body
	global   string // extra lines in the tptoken global block
	evBlock  string // the tptoken_events directive's block body ("" = none)
	admin    string // admin endpoint (host:port) with withAdmin; "" = admin off
	adminOn  bool
	client   *http.Client
	caddyCfg string
}

// tap records the last request the upstream received, then forwards it to the emulator.
type tap struct {
	mu      sync.Mutex
	last    *http.Request
	observe func(w http.ResponseWriter, r *http.Request) http.ResponseWriter // optional; may wrap the writer
	proxy   *httputil.ReverseProxy
}

func (tp *tap) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tp.mu.Lock()
	tp.last = r.Clone(context.Background())
	observe := tp.observe
	tp.mu.Unlock()
	if observe != nil {
		w = observe(w, r)
	}
	if strings.HasPrefix(r.URL.Path, hostileUpstreamPrefix) {
		hostileUpstream.ServeHTTP(w, r) // security_test.go: answers a client can steer
		return
	}
	tp.proxy.ServeHTTP(w, r)
}

// setObserver makes f see every request the platform receives (nil: none).
func (tp *tap) setObserver(f func(w http.ResponseWriter, r *http.Request) http.ResponseWriter) {
	tp.mu.Lock()
	tp.observe = f
	tp.mu.Unlock()
}

func (tp *tap) lastRequest() *http.Request {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.last
}

type e2eOpt func(*e2e)

func withHandler(body string) e2eOpt { return func(e *e2e) { e.handler = body } }
func withGlobal(lines string) e2eOpt { return func(e *e2e) { e.global = lines } }

// withEvents gives the tptoken_events directive a block.
func withEvents(block string) e2eOpt { return func(e *e2e) { e.evBlock = block } }

// withAdmin enables Caddy's admin endpoint on a free loopback port (x.admin).
func withAdmin() e2eOpt { return func(e *e2e) { e.adminOn = true } }

func newE2E(t *testing.T, family tokensource.Family, lt emulator.Lifetimes, opts ...e2eOpt) *e2e {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	x := &e2e{t: t, family: family, storage: t.TempDir(), logFile: filepath.Join(t.TempDir(), "caddy.log")}
	for _, o := range opts {
		o(x)
	}
	emu, err := emulator.New(emulator.Config{
		ComponentAppID: e2eComponent, ComponentAppSecret: e2eSecret, MessageToken: e2eMsgToken, EncodingAESKey: e2eAESKey,
		Seed:           42,
		AccessTokenTTL: lt.AccessTokenTTL, RefreshTokenTTL: lt.RefreshTokenTTL, ComponentTokenTTL: lt.ComponentTokenTTL,
		PushRetryBackoff: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	emuSrv := httptest.NewServer(emu)
	u, _ := url.Parse(emuSrv.URL)
	x.tap = &tap{proxy: httputil.NewSingleHostReverseProxy(u)}
	tapSrv := httptest.NewServer(x.tap)
	x.emu, x.emuURL = emu, tapSrv.URL
	x.client = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256}}
	t.Setenv("TPT_APPID", e2eComponent)
	t.Setenv("TPT_SECRET", e2eSecret)
	t.Setenv("TPT_MSG", e2eMsgToken)
	t.Setenv("TPT_AES", e2eAESKey)
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping caddy: %v", err)
		}
		tapSrv.Close()
		emuSrv.Close()
		_ = emu.Close()
	})
	// A port found free may be taken before Caddy binds it: try fresh ports.
	for attempt := 1; ; attempt++ {
		x.proxy = fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
		x.events = fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
		if x.adminOn {
			x.admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		}
		if err := emu.SetPushURL(x.events + "/"); err != nil {
			t.Fatal(err)
		}
		err := x.load()
		if err == nil {
			break
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("loading config: %v", err)
		}
	}
	if err := emu.PushTicket(context.Background()); err != nil {
		t.Fatalf("ticket push to tptoken_events: %v", err)
	}
	return x
}

// freePort is a free loopback port, never the same twice in one process.
func freePort(t testing.TB) int { return testport.Free(t) }

// caddyfile is the configuration under test: secrets from {env.*}, file storage
// in a temp folder, everything logged at DEBUG to a file.
func (x *e2e) caddyfile() string {
	handler := x.handler
	if handler == "" {
		handler = "tptoken"
	}
	handler = strings.ReplaceAll(handler, "{{emu}}", x.emuURL) // the platform's address, for handler blocks with their own proxy
	admin := "off"
	if x.admin != "" {
		admin = x.admin
	}
	events := "tptoken_events"
	if x.evBlock != "" {
		events += " {\n\t\t" + x.evBlock + "\n\t}"
	}
	return fmt.Sprintf(`{
	admin %s
	persist_config off
	auto_https off
	storage file_system %s
	log {
		output file %s
		level DEBUG
	}
	tptoken {
		component_appid {env.TPT_APPID}
		component_appsecret {env.TPT_SECRET}
		message_token {env.TPT_MSG}
		encoding_aes_key {env.TPT_AES}
		api %s
		endpoint %s
		%s
	}
}

%s {
	%s
	%s
	reverse_proxy %s {
		transport tptoken
	}
}

%s {
	%s
}
`, admin, x.storage, x.logFile, x.family, x.emuURL, x.global, x.proxy, x.site, handler, x.emuURL, x.events, events)
}

// start adapts the Caddyfile and loads it (a reload when Caddy already runs).
func (x *e2e) start() {
	x.t.Helper()
	if err := x.load(); err != nil {
		x.t.Fatalf("loading config: %v", err)
	}
}

func (x *e2e) load() error {
	x.t.Helper()
	x.caddyCfg = x.caddyfile()
	cfg, warn, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(x.caddyCfg), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		x.t.Fatalf("adapting:\n%s\n%v", x.caddyCfg, err)
	}
	for _, w := range warn {
		if !strings.Contains(w.Message, "not formatted") {
			x.t.Logf("caddyfile warning: %s", w.String())
		}
	}
	return caddy.Load(cfg, true)
}

// authorize authorizes appid on the platform, which pushes AUTHORIZED to
// tptoken_events, and waits until the authorizer serves.
func (x *e2e) authorize(appids ...string) {
	x.t.Helper()
	for _, id := range appids {
		if _, err := x.emu.Authorize(id, true); err != nil {
			x.t.Fatalf("authorize %s: %v", id, err)
		}
	}
	for _, id := range appids {
		if x.emu.Stats().App(id).Exchanges < 1 {
			x.t.Fatalf("the AUTHORIZED push for %s was not exchanged", id)
		}
	}
}

// apiPath is the family's sample downstream API.
func (x *e2e) apiPath() string {
	if x.family == tokensource.V2 {
		return "/api/apps/v2/basic_info/get_info/"
	}
	return "/openapi/v1/microapp/app/info"
}

type apiAnswer struct {
	Status  int
	Errno   int
	Message string
	Data    emulator.DownstreamData
	TPToken struct {
		Error      string `json:"error"`
		AppID      string `json:"appid"`
		RetryAfter int    `json:"retry_after"`
	}
	Header http.Header
	Raw    string
}

// call sends a request through Caddy as a legacy app would.
func (x *e2e) call(method, pathAndQuery string, header http.Header, body string) apiAnswer {
	x.t.Helper()
	a, err := x.tryCall(method, pathAndQuery, header, body)
	if err != nil {
		x.t.Fatal(err)
	}
	return a
}

func (x *e2e) tryCall(method, pathAndQuery string, header http.Header, body string) (apiAnswer, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, x.proxy+pathAndQuery, rd)
	if err != nil {
		return apiAnswer{}, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := x.client.Do(req)
	if err != nil {
		return apiAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return apiAnswer{}, err
	}
	a := apiAnswer{Status: resp.StatusCode, Header: resp.Header, Raw: string(b)}
	var env struct {
		Errno   *int                    `json:"errno"`
		ErrNo   *int                    `json:"err_no"`
		Message string                  `json:"message"`
		ErrMsg  string                  `json:"err_msg"`
		Data    emulator.DownstreamData `json:"data"`
		TPToken json.RawMessage         `json:"tptoken"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return a, fmt.Errorf("answer is not JSON (status %d): %q", resp.StatusCode, b)
	}
	switch {
	case env.Errno != nil:
		a.Errno, a.Message = *env.Errno, env.Message
	case env.ErrNo != nil:
		a.Errno, a.Message = *env.ErrNo, env.ErrMsg
	}
	a.Data = env.Data
	if env.TPToken != nil {
		_ = json.Unmarshal(env.TPToken, &a.TPToken)
	}
	return a, nil
}

func appidHeader(appid string) http.Header {
	return http.Header{"X-Authorizer-Appid": {appid}}
}

// assertNoSecretInLog checks the DEBUG log file (and anything else given) for
// every value the emulator issued and every configured secret.
func (x *e2e) assertNoSecretIn(what string, text string) {
	x.t.Helper()
	secrets := append(x.emu.IssuedSecrets(), e2eSecret, e2eMsgToken, e2eAESKey)
	for _, s := range secrets {
		if len(s) >= 6 && strings.Contains(text, s) {
			i := strings.Index(text, s)
			from := max(0, i-200)
			x.t.Fatalf("%s holds a secret (%d chars) near: %q", what, len(s), text[from:i])
		}
	}
}

func (x *e2e) debugLog() string {
	x.t.Helper()
	b, err := os.ReadFile(x.logFile)
	if err != nil {
		x.t.Fatal(err)
	}
	return string(b)
}

func stopCaddy() error { return caddy.Stop() }

// isConnectionReset reports a connection refused, reset or closed before any answer:
// what a client sees when Caddy hands its listener over on a reload or closes
// an idle keep-alive connection just as a request is sent on it. No handler ran.
func isConnectionReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && (oe.Op == "dial" || errors.Is(err, syscall.ECONNRESET)) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}
