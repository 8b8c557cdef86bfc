package tptoken

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/spf13/cobra"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/internal/testport"
	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
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
	route    string // with withRoute: the site's routes, instead of handler + reverse_proxy
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
		hostileUpstream.ServeHTTP(w, r) // answers a client can steer (security_test.go)
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
		// Caddy's Stop does not wait for requests in flight: let the
		// emulator's background pushes be answered first, or one may still
		// write to the storage as the test removes it.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		emu.Drain(ctx)
		cancel()
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
	// the platform's address, for blocks with their own proxy or endpoint
	handler = strings.ReplaceAll(handler, "{{emu}}", x.emuURL)
	global, site := strings.ReplaceAll(x.global, "{{emu}}", x.emuURL), strings.ReplaceAll(x.site, "{{emu}}", x.emuURL)
	routes := handler + "\n\treverse_proxy " + x.emuURL + " {\n\t\ttransport tptoken\n\t}"
	if x.route != "" {
		_, port, _ := net.SplitHostPort(strings.TrimPrefix(x.proxy, "http://"))
		routes = strings.NewReplacer("{{emu}}", x.emuURL, "{{proxy}}", x.proxy, "{{proxy_port}}", port, "{{events}}", x.events).Replace(x.route)
	}
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
}

%s {
	%s
}
`, admin, x.storage, x.logFile, x.family, x.emuURL, global, x.proxy, site, routes, x.events, events)
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
	if err := caddy.Load(cfg, true); err != nil {
		return err
	}
	// A reload shuts the previous servers down, closing their keep-alive
	// connections: a request on one the client still holds would fail with
	// a reset or EOF that no user of a reloaded Caddy sees twice.
	if x.client != nil {
		x.client.CloseIdleConnections()
	}
	return nil
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

// More of the harness: options, calls and checks used by several test files.

// withSite adds lines to the tptoken site block (before the handler).
func withSite(lines string) e2eOpt { return func(e *e2e) { e.site = lines } }

// withRoute makes body the tptoken site's routes, instead of the handler and
// a reverse_proxy to the platform ({{emu}}: the platform's URL; {{proxy}}:
// the site's own, {{proxy_port}} its port; {{events}}: the tptoken_events site's).
func withRoute(body string) e2eOpt { return func(e *e2e) { e.route = body } }

// rawCall sends a request through Caddy and returns the status, headers and body
// as they are, for answers that are not the family's JSON.
func (x *e2e) rawCall(method, pathAndQuery string, header http.Header, body string) (int, http.Header, string) {
	x.t.Helper()
	req, err := http.NewRequest(method, x.proxy+pathAndQuery, strings.NewReader(body))
	if err != nil {
		x.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := x.client.Do(req)
	if err != nil {
		x.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		x.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

var e2eFamilies = []tokensource.Family{tokensource.V1, tokensource.V2}

// loadWithLog loads a Caddyfile made of a global block (tptoken blocks
// given) and site, logging at INFO to a file; it returns what was logged and
// the load error.
func loadWithLog(t *testing.T, tptokenBlocks, site string) (string, error) {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	cfg := fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
	storage file_system %s
	log {
		output file %s
		level INFO
	}
%s
}
%s`, t.TempDir(), logFile, tptokenBlocks, site)
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting:\n%s\n%v", cfg, err)
	}
	lerr := caddy.Load(js, true)
	b, _ := os.ReadFile(logFile)
	return string(b), lerr
}

// The `caddy tptoken` CLI, run in this process against x.admin.

// runCLIWithInput is runCLI with standard input.
func runCLIWithInput(t *testing.T, in string, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "tptoken", SilenceErrors: true}
	configureCommand(root)
	var out strings.Builder
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetIn(strings.NewReader(in))
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// runCLI runs `caddy tptoken <args>` in process, as Caddy's cobra root would,
// and returns what it printed.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "tptoken", SilenceErrors: true}
	configureCommand(root)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// exitCodeOf is the exit status Caddy's main gives a command that returned
// err: the code of caddycmd's exit error (unexported: read by reflection),
// else 1 for any error.
func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	v := reflect.ValueOf(err)
	if v.Kind() == reflect.Pointer && v.Elem().Kind() == reflect.Struct {
		if f := v.Elem().FieldByName("ExitCode"); f.IsValid() && f.CanInt() {
			return int(f.Int())
		}
	}
	return 1
}

// cli runs a command against x's admin endpoint and checks its output holds no secret.
func (x *e2e) cli(args ...string) (string, error) {
	x.t.Helper()
	out, err := runCLI(x.t, append(args, "--address", x.admin)...)
	x.assertNoSecretIn("caddy tptoken "+strings.Join(args, " "), out)
	if err != nil {
		x.assertNoSecretIn("caddy tptoken error", err.Error())
	}
	return out, err
}

// The admin API (admin.api.tptoken).

type adminAnswer struct {
	Status int
	Header http.Header
	Body   string
}

// adminCall sends a request to the admin endpoint at addr, with the Origin
// header Caddy requires.
func adminCall(t *testing.T, addr, method, path, body string) adminAnswer {
	t.Helper()
	// Caddy stops the admin server of the previous config in the background
	// (replaceLocalAdminServer), and both listen on the address for a moment:
	// a connection the old one accepts just before it closes ends without an
	// answer. Such a request was never served, so it is sent again, briefly.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, err := http.NewRequest(method, "http://"+addr+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Origin", "http://"+addr)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
		if err != nil {
			if (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return adminAnswer{Status: resp.StatusCode, Header: resp.Header, Body: string(b)}
	}
}

// adminDo calls the admin API of x, checks that the answer holds no secret,
// and returns it.
func (x *e2e) adminDo(method, path, body string) adminAnswer {
	x.t.Helper()
	a := adminCall(x.t, x.admin, method, path, body)
	x.assertNoSecretIn(method+" "+path, a.Body)
	return a
}

// adminJSON calls the admin API, wants the status and decodes the answer into out.
func (x *e2e) adminJSON(method, path, body string, want int, out any) adminAnswer {
	x.t.Helper()
	a := x.adminDo(method, path, body)
	if a.Status != want {
		x.t.Fatalf("%s %s: status %d, want %d: %s", method, path, a.Status, want, a.Body)
	}
	if ct := a.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		x.t.Fatalf("%s %s: Content-Type %q", method, path, ct)
	}
	if out != nil {
		if err := json.Unmarshal([]byte(a.Body), out); err != nil {
			x.t.Fatalf("%s %s: %v: %s", method, path, err, a.Body)
		}
	}
	return a
}

// adminError wants an error status and a JSON error naming each of mention.
func (x *e2e) adminError(method, path, body string, want int, mention ...string) adminAnswer {
	x.t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	a := x.adminJSON(method, path, body, want, &e)
	for _, m := range mention {
		if !strings.Contains(e.Error, m) {
			x.t.Errorf("%s %s: error %q does not mention %q", method, path, e.Error, m)
		}
	}
	return a
}

// legacyStore plays the token store of a legacy app on api v1: it exchanges
// codes and refreshes by calling the platform itself, as the legacy code did.
type legacyStore struct {
	t  *testing.T
	x  *e2e
	ct string // component_access_token
}

func newLegacyStore(x *e2e) *legacyStore {
	x.t.Helper()
	if x.family != tokensource.V1 {
		x.t.Fatal("legacyStore speaks api v1")
	}
	l := &legacyStore{t: x.t, x: x}
	var out struct {
		Token string `json:"component_access_token"`
	}
	l.get(emulator.PathV1ComponentToken, url.Values{"component_appid": {e2eComponent},
		"component_appsecret": {e2eSecret}, "component_ticket": {x.emu.Ticket()}}, &out)
	l.ct = out.Token
	return l
}

// get calls the platform's v1 path with q and decodes its answer into out.
func (l *legacyStore) get(path string, q url.Values, out any) {
	l.t.Helper()
	resp, err := http.Get(l.x.emuURL + path + "?" + q.Encode())
	if err != nil {
		l.t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Errno int `json:"errno"`
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || json.Unmarshal(b, &body) != nil || body.Errno != 0 || json.Unmarshal(b, out) != nil {
		l.t.Fatalf("%s: %v %s", path, err, b)
	}
}

// grant uses a code or a refresh token and returns the new refresh token.
func (l *legacyStore) grant(grantType, field, value string) string {
	l.t.Helper()
	var out struct {
		RefreshToken string `json:"authorizer_refresh_token"`
	}
	l.get(emulator.PathV1OAuthToken, url.Values{"component_appid": {e2eComponent}, "component_access_token": {l.ct},
		"grant_type": {grantType}, field: {value}}, &out)
	return out.RefreshToken
}

// authorize has appid authorize the TP (no push) and exchanges the code as the
// legacy app would: it returns the legacy refresh token.
func (l *legacyStore) authorize(x *e2e, appid string) string {
	l.t.Helper()
	code, err := x.emu.Authorize(appid, false)
	if err != nil {
		l.t.Fatal(err)
	}
	return l.grant(emulator.GrantCode, "authorization_code", code)
}

// refresh uses a refresh token as the legacy refresher would; the token given
// is dead afterwards.
func (l *legacyStore) refresh(rt string) string {
	l.t.Helper()
	return l.grant(emulator.GrantRefresh, "authorizer_refresh_token", rt)
}

// Pushes to tptoken_events, sealed as the platform seals them.

// pushPayload is a decrypted push (docs/protocol.md §Pushes).
type pushPayload struct {
	AppID                      string `json:"AppId,omitempty"`
	TpAppID                    string `json:"TpAppId,omitempty"`
	EventTime                  string `json:"EventTime,omitempty"`
	Event                      string `json:"Event,omitempty"`
	AuthorizationCode          string `json:"AuthorizationCode,omitempty"`
	AuthorizationCodeExpiresIn int64  `json:"AuthorizationCodeExpiresIn,omitempty"`
	Ticket                     string `json:"Ticket,omitempty"`
	MsgType                    string `json:"MsgType,omitempty"`
	AppName                    string `json:"AppName,omitempty"`
}

func authorizedPayload(appid, code string) pushPayload {
	return pushPayload{AppID: appid, TpAppID: e2eComponent, Event: "AUTHORIZED", AuthorizationCode: code,
		AuthorizationCodeExpiresIn: 3600, EventTime: push.FormatTime(time.Now())}
}

// seal encrypts and signs a payload with the given TP identity, stamped now.
func seal(t *testing.T, componentAppID string, p any) []byte {
	t.Helper()
	return sealAt(t, componentAppID, p, time.Now())
}

// sealAt encrypts and signs a payload as the platform does, stamped ts.
func sealAt(t *testing.T, componentAppID string, p any, ts time.Time) []byte {
	t.Helper()
	pc, err := push.NewCrypto(e2eMsgToken, e2eAESKey, componentAppID)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	body, err := pc.Seal(plain, strconv.FormatInt(ts.Unix(), 10), "48213")
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// postPush delivers a push body to tptoken_events.
func (x *e2e) postPush(body []byte) (int, string) {
	x.t.Helper()
	resp, err := x.client.Post(x.events+"/", "application/json", bytes.NewReader(body))
	if err != nil {
		x.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// getEvents sends a GET (the authorization redirect) to tptoken_events.
func (x *e2e) getEvents(query string) (int, http.Header, string) {
	x.t.Helper()
	resp, err := x.client.Get(x.events + "/?" + query)
	if err != nil {
		x.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// stored returns every tptoken record on disk, by path (locks excluded).
func (x *e2e) stored() map[string][]byte {
	x.t.Helper()
	m := map[string][]byte{}
	root := filepath.Join(x.storage, "tptoken")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		m[strings.TrimPrefix(p, x.storage)] = b
		return nil
	})
	if err != nil {
		x.t.Fatal(err)
	}
	return m
}

func totalCalls(s emulator.Stats) int64 {
	var n int64
	for _, v := range s.Calls {
		n += v
	}
	return n
}

func slicesOfKeys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// The upstream behind the tap answers paths under hostileUpstreamPrefix itself
// (security_test.go).
const hostileUpstreamPrefix = "/_upstream/"

// hostileUpstream answers what a client may steer or an upstream may do:
//
//	…/steer?body=<json>  answers <json> (HTTP 200, application/json): an API
//	                     whose answer the client chooses
//	/_upstream/dir/      a Go ServeMux directory: /_upstream/dir?q redirects to
//	                     /_upstream/dir/?q, keeping the query (token included)
//	/_upstream/reflect   echoes the token it received into every kind of
//	                     response header, a 103 Early Hints and a trailer
var hostileUpstream = func() *http.ServeMux {
	mux := http.NewServeMux()
	steer := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, r.URL.Query().Get("body"))
	}
	mux.HandleFunc(hostileUpstreamPrefix+"steer", steer)
	mux.HandleFunc(hostileUpstreamPrefix+"component/steer", steer)
	mux.HandleFunc(hostileUpstreamPrefix+"dir/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"errno":0,"err_no":0,"data":{"dir":true}}`)
	})
	mux.HandleFunc(hostileUpstreamPrefix+"reflect", func(w http.ResponseWriter, r *http.Request) {
		tok := r.URL.Query().Get("authorizer_access_token")
		if tok == "" {
			tok = r.Header.Get("Access-Token")
		}
		reflected.Store(tok)
		h := w.Header()
		h.Set("Link", "</style.css?t="+url.QueryEscape(tok)+">; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		h.Del("Link")
		h.Set("Location", hostileUpstreamPrefix+"landing?x=1&authorizer_access_token="+tok+"&copy="+escapeEveryByte(tok, "%%%02X")+"#top")
		h.Set("Content-Location", hostileUpstreamPrefix+"c/"+url.PathEscape(tok))
		h.Set("Refresh", "0; url="+hostileUpstreamPrefix+"landing?t="+tok)
		h.Set("Link", "</next?t="+url.QueryEscape(escapeEveryByte(tok, "%%%02x"))+">; rel=next")
		h.Set("X-Echo", tok)
		h.Set("X-Tok-"+tok, "1")
		h.Set("Set-Cookie", "t="+tok+"; Path=/")
		h.Set("Content-Type", "application/json")
		h.Set("Trailer", "X-Trailer-Echo")
		w.WriteHeader(http.StatusFound)
		_, _ = io.WriteString(w, `{"errno":0,"err_no":0,"data":{}}`)
		h.Set("X-Trailer-Echo", tok)
	})
	return mux
}()

// reflected is the token /_upstream/reflect last received.
var reflected atomic.Value

// waitUntil polls cond until it holds or the deadline passes.
func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
