//go:build linux

// Package faulttest breaks things on purpose: several real Caddy processes built
// from ./cmd/caddy share one storage folder in front of the platform emulator,
// and the tests kill processes, drop platform answers, take the platform down,
// make storage read-only and revoke authorizations while load runs.
package faulttest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/internal/testport"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

const (
	component = "tt00faultcomponent"
	secret    = "fault-component-secret-0077"
	msgToken  = "fault-message-token-0077"
	aesKey    = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
)

// caddyBin is built once by TestMain.
var caddyBin string

func TestMain(m *testing.M) {
	if os.Getenv("TPTOKEN_SKIP_FAULT_TESTS") != "" {
		fmt.Println("faulttest: skipped (TPTOKEN_SKIP_FAULT_TESTS)")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "tptoken-faulttest-")
	if err != nil {
		panic(err)
	}
	_ = os.Chmod(dir, 0o755)
	caddyBin = filepath.Join(dir, "caddy")
	build := exec.Command("go", "build", "-o", caddyBin, "../cmd/caddy")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Println("faulttest: building caddy:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// cluster is an emulated platform and Caddy instances sharing one storage folder.
type cluster struct {
	t       *testing.T
	family  tokensource.Family
	emu     *emulator.Emulator
	emuURL  string
	storage string
	base    string // instance folders live here (removed after the cleanup that reads logs)
	global  string // extra lines for the tptoken global block
	handler string // the site's handler lines before reverse_proxy; default "tptoken"
	level   string // log level; default INFO
	admin   string // Caddy's admin endpoint (host:port); default off
	bin     string // the Caddy binary; default caddyBin
	storeM  string // the storage module; default file_system
	// adminEach gives each instance an admin endpoint of its own (instance.admin).
	adminEach bool
	insts     []*instance
	client    *http.Client
}

type instance struct {
	n       int
	cmd     *exec.Cmd
	proxy   string
	events  string
	logPath string
	cfgPath string
	admin   string // with cluster.adminEach
	home    string
	exited  chan struct{}
	asUser  *syscall.Credential
}

func newCluster(t *testing.T, family tokensource.Family, lt emulator.Lifetimes, global string) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("fault test")
	}
	c := &cluster{t: t, family: family, storage: t.TempDir(), base: t.TempDir(), global: global}
	emu, err := emulator.New(emulator.Config{
		ComponentAppID: component, ComponentAppSecret: secret, MessageToken: msgToken, EncodingAESKey: aesKey,
		AccessTokenTTL: lt.AccessTokenTTL, RefreshTokenTTL: lt.RefreshTokenTTL, Seed: 77,
		PushRetryBackoff: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(emu)
	c.emu, c.emuURL = emu, srv.URL
	c.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	t.Cleanup(func() {
		for _, in := range c.insts {
			c.stop(in)
		}
		srv.Close()
		_ = emu.Close()
		if t.Failed() {
			for _, in := range c.insts {
				b, _ := os.ReadFile(in.logPath)
				lines := strings.Split(string(b), "\n")
				t.Logf("--- last lines of instance %d's log:\n%s", in.n, strings.Join(lines[max(0, len(lines)-40):], "\n"))
			}
		}
	})
	return c
}

// freePort is a free loopback port, never the same twice in one process.
func freePort(t testing.TB) int { return testport.Free(t) }

// start launches one more instance (or restarts in) and waits until it serves.
func (c *cluster) start(asUser *syscall.Credential) *instance {
	c.t.Helper()
	in := &instance{n: len(c.insts), asUser: asUser}
	c.insts = append(c.insts, in)
	c.launch(in)
	return in
}

func (c *cluster) launch(in *instance) {
	c.t.Helper()
	dir, err := os.MkdirTemp(c.base, fmt.Sprintf("instance%d-", in.n))
	if err != nil {
		c.t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o777)
	in.home = dir
	in.proxy = fmt.Sprintf("http://127.0.0.1:%d", freePort(c.t))
	in.events = fmt.Sprintf("http://127.0.0.1:%d", freePort(c.t))
	in.logPath = filepath.Join(dir, "caddy.log")
	in.cfgPath = filepath.Join(dir, "Caddyfile")
	handler, level, admin, bin, storeM := c.handler, c.level, c.admin, c.bin, c.storeM
	if c.adminEach {
		in.admin = fmt.Sprintf("127.0.0.1:%d", freePort(c.t))
		admin = in.admin
	}
	if admin == "" {
		admin = "off"
	}
	if bin == "" {
		bin = caddyBin
	}
	if storeM == "" {
		storeM = "file_system"
	}
	if handler == "" {
		handler = "tptoken"
	}
	if level == "" {
		level = "INFO"
	}
	cfg := fmt.Sprintf(`{
	admin %s
	persist_config off
	auto_https off
	storage %s %s
	log {
		output file %s
		level %s
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
	reverse_proxy %s {
		transport tptoken
	}
}

%s {
	tptoken_events
}
`, admin, storeM, c.storage, in.logPath, level, c.family, c.emuURL, c.global, in.proxy, handler, c.emuURL, in.events)
	if err := os.WriteFile(in.cfgPath, []byte(cfg), 0o644); err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", in.cfgPath, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "TPT_APPID="+component, "TPT_SECRET="+secret, "TPT_MSG="+msgToken, "TPT_AES="+aesKey,
		"HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	out, err := os.Create(filepath.Join(dir, "stderr.log"))
	if err != nil {
		c.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	// Pdeathsig: the instances die with the test binary, even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if in.asUser != nil {
		cmd.SysProcAttr.Credential = in.asUser
		_ = os.Chown(dir, int(in.asUser.Uid), int(in.asUser.Gid))
	}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	in.cmd, in.exited = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); out.Close(); close(in.exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(in.events) // tptoken_events answers a GET without a code with 400
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusBadRequest {
				return
			}
		}
		select {
		case <-in.exited:
			b, _ := os.ReadFile(filepath.Join(dir, "stderr.log"))
			c.t.Fatalf("instance %d exited at start:\n%s", in.n, b)
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("instance %d did not start", in.n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill is kill -9.
func (c *cluster) kill(in *instance) {
	_ = in.cmd.Process.Signal(syscall.SIGKILL)
	<-in.exited
}

func (c *cluster) stop(in *instance) {
	select {
	case <-in.exited:
		return
	default:
	}
	_ = in.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-in.exited:
	case <-time.After(15 * time.Second):
		c.kill(in)
	}
}

// pushTo points the emulator's pushes at an instance and sends a ticket.
func (c *cluster) pushTo(in *instance) {
	c.t.Helper()
	if err := c.emu.SetPushURL(in.events + "/"); err != nil {
		c.t.Fatal(err)
	}
	if err := c.emu.PushTicket(context.Background()); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) authorize(ids ...string) {
	c.t.Helper()
	for _, id := range ids {
		if _, err := c.emu.Authorize(id, true); err != nil {
			c.t.Fatalf("authorize %s: %v", id, err)
		}
	}
}

func (c *cluster) apiPath() string {
	if c.family == tokensource.V2 {
		return "/api/apps/v2/basic_info/get_info/"
	}
	return "/openapi/v1/microapp/app/info"
}

// result is one request's outcome as a legacy app sees it.
type result struct {
	status  int
	errno   int
	appid   string // the token's owner, per the emulator
	message string
	kind    string // tptoken error kind
	latency time.Duration
	err     error
}

func (r result) ok(appid string) bool {
	return r.err == nil && r.status == 200 && r.errno == 0 && r.appid == appid
}

func (r result) String() string {
	if r.err != nil {
		return r.err.Error()
	}
	return fmt.Sprintf("status %d errno %d owner %q kind %q %s", r.status, r.errno, r.appid, r.kind, r.message)
}

func (c *cluster) call(in *instance, appid, body string) result {
	method := http.MethodGet
	var rd io.Reader
	if body != "" {
		method, rd = http.MethodPost, strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, in.proxy+c.apiPath(), rd)
	req.Header.Set("X-Authorizer-Appid", appid)
	start := time.Now()
	resp, err := c.client.Do(req)
	r := result{latency: time.Since(start)}
	if err != nil {
		r.err = err
		return r
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r.status = resp.StatusCode
	var env struct {
		Errno   int    `json:"errno"`
		ErrNo   int    `json:"err_no"`
		Message string `json:"message"`
		ErrMsg  string `json:"err_msg"`
		Data    struct {
			AppID string `json:"appid"`
		} `json:"data"`
		TPToken struct {
			Error string `json:"error"`
		} `json:"tptoken"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		r.err = fmt.Errorf("status %d, not JSON: %q", resp.StatusCode, b)
		return r
	}
	r.errno, r.message, r.appid, r.kind = env.Errno+env.ErrNo, env.Message+env.ErrMsg, env.Data.AppID, env.TPToken.Error
	return r
}

// load runs workers sending requests round-robin over instances and appids
// until stop is closed, and returns every result.
type load struct {
	mu      sync.Mutex
	results map[string][]result // by appid
	wg      sync.WaitGroup
	stop    chan struct{}
}

func (c *cluster) runLoad(workers int, insts []*instance, ids []string) *load {
	l := &load{results: map[string][]result{}, stop: make(chan struct{})}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				in := insts[(w+i)%len(insts)]
				id := ids[(w*7+i)%len(ids)]
				r := c.call(in, id, "")
				l.mu.Lock()
				l.results[id] = append(l.results[id], r)
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *load) finish() map[string][]result {
	close(l.stop)
	l.wg.Wait()
	return l.results
}

func percentile(rs []time.Duration, p float64) time.Duration {
	if len(rs) == 0 {
		return 0
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i] < rs[j] })
	return rs[min(len(rs)-1, int(float64(len(rs))*p))]
}

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logs returns an instance's log.
func (in *instance) logs() string {
	b, _ := os.ReadFile(in.logPath)
	return string(b)
}
