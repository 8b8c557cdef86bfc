//go:build linux

package faulttest

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// Apps' own tokens (client_token, app_access_token) through real Caddy
// processes sharing one storage folder: 6-second tokens, the platform's cut
// of the previous token to a 2-second grace, and instances renewing 2 s
// ahead (grace 2s: every instance moves to a new token within 0.6 s).

const (
	ownApp       = "tt00faultownapp"
	ownAppSecret = "fault-own-app-secret-0077"
)

var appKinds = []string{tokensource.ClientToken, tokensource.AppAccessToken}

// newAppCluster is a cluster whose instances keep ownApp's two tokens:
// /ct/... injects its client_token, /at/... its app_access_token (the rest of
// the path goes to the platform).
func newAppCluster(t *testing.T) *cluster {
	t.Helper()
	c := newCluster(t, tokensource.V2, emulator.Lifetimes{}, "")
	if err := c.emu.AddApp(ownApp, ownAppSecret); err != nil {
		t.Fatal(err)
	}
	c.emu.SetLifetimes(emulator.Lifetimes{AppTokenTTL: 6 * time.Second, AppGrace: 2 * time.Second})
	c.global = fmt.Sprintf(`app %s {
			secret %s
			tokens client_token app_access_token
			endpoint client_token %s
			endpoint app_access_token %s
			refresh_ahead 2s
			grace 2s
		}`, ownApp, ownAppSecret, c.emuURL, c.emuURL)
	route := func(prefix, kind string) string {
		return fmt.Sprintf("handle_path /%s/* {\n\t\ttptoken {\n\t\t\ttoken %s\n\t\t}\n\t\treverse_proxy %s {\n\t\t\ttransport tptoken\n\t\t}\n\t}", prefix, kind, c.emuURL)
	}
	// The site's own tptoken + reverse_proxy (after these) serve the client_token too.
	c.handler = route("at", tokensource.AppAccessToken) + "\n\t" + route("ct", tokensource.ClientToken) + "\n\ttptoken {\n\t\ttoken client_token\n\t}"
	return c
}

// appResult is one request's outcome for an app token route.
type appResult struct {
	status     int
	errno      int
	owner      string
	kind       string // the token kind the platform saw
	tptoken    string // tptoken's error kind
	retryAfter string
	err        error
}

func (r appResult) ok(kind string) bool {
	return r.err == nil && r.status == 200 && r.errno == 0 && r.owner == ownApp && r.kind == kind
}

func (r appResult) String() string {
	if r.err != nil {
		return r.err.Error()
	}
	return fmt.Sprintf("status %d errno %d owner %q kind %q tptoken %q retry-after %q", r.status, r.errno, r.owner, r.kind, r.tptoken, r.retryAfter)
}

func kindPrefix(kind string) string {
	if kind == tokensource.AppAccessToken {
		return "/at"
	}
	return "/ct"
}

// callApp sends a request for kind's token through in, to a sample API.
func (c *cluster) callApp(in *instance, kind string) appResult {
	resp, err := c.client.Post(in.proxy+kindPrefix(kind)+"/api/apps/v1/qrcode/create/", "application/json", strings.NewReader(`{"path":"p"}`))
	if err != nil {
		return appResult{err: err}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := appResult{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
	var env struct {
		ErrNo int `json:"err_no"`
		Data  struct {
			AppID string `json:"appid"`
			Token string `json:"token"`
		} `json:"data"`
		TPToken struct {
			Error string `json:"error"`
		} `json:"tptoken"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		r.err = fmt.Errorf("status %d, not JSON: %q", resp.StatusCode, b)
		return r
	}
	r.errno, r.owner, r.kind, r.tptoken = env.ErrNo, env.Data.AppID, env.Data.Token, env.TPToken.Error
	return r
}

// appLoad runs workers sending requests round-robin over instances and kinds
// until stopped, and counts the outcomes.
type appLoad struct {
	mu       sync.Mutex
	total    int
	failed   int
	first    string
	wg       sync.WaitGroup
	stopping chan struct{}
}

func (c *cluster) runAppLoad(workers int, insts []*instance) *appLoad {
	l := &appLoad{stopping: make(chan struct{})}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stopping:
					return
				default:
				}
				kind := appKinds[(w+i)%2]
				r := c.callApp(insts[(w+i/2)%len(insts)], kind)
				l.mu.Lock()
				l.total++
				if !r.ok(kind) {
					l.failed++
					if l.first == "" {
						l.first = kind + ": " + r.String()
					}
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *appLoad) stop() {
	close(l.stopping)
	l.wg.Wait()
}

// storedGeneration is the generation of kind's token in the cluster's storage
// (0 before the first fetch).
func (c *cluster) storedGeneration(kind string) uint64 {
	c.t.Helper()
	b, err := os.ReadFile(filepath.Join(c.storage, "tptoken", "@apps", ownApp, kind+".json"))
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		c.t.Fatal(err)
	}
	var d struct {
		Generation uint64 `json:"generation"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		c.t.Fatalf("%s record: %v", kind, err)
	}
	return d.Generation
}

// checkOneFetchPerGeneration is the cluster's invariant for an app token:
// every fetch the platform issued is a generation in storage, that is, no
// instance fetched a token another one had fetched already (each such
// fetch cuts every instance's token short, and kills the one before).
func checkOneFetchPerGeneration(kind string, fetches int64, generations uint64) error {
	if fetches != int64(generations) {
		return fmt.Errorf("%s: %d fetches at the platform for %d generations in storage: instances fetched over each other", kind, fetches, generations)
	}
	return nil
}

// clusterRun is what one run under load showed.
type clusterRun struct {
	requests, failed int
	first            string
	fetches          map[string]int64
	generations      map[string]uint64
	stats            map[string]emulator.AppCounters
}

// runAppCluster starts three instances, loads them for d, stops them (so
// every fetch in flight is stored) and reads storage and the platform.
func runAppCluster(t *testing.T, c *cluster, d time.Duration) clusterRun {
	insts := []*instance{c.start(nil), c.start(nil), c.start(nil)}
	l := c.runAppLoad(24, insts)
	time.Sleep(d)
	l.stop()
	for _, in := range insts {
		c.stop(in)
	}
	run := clusterRun{requests: l.total, failed: l.failed, first: l.first,
		fetches: map[string]int64{}, generations: map[string]uint64{}, stats: map[string]emulator.AppCounters{}}
	st := c.emu.Stats()
	for _, kind := range appKinds {
		run.stats[kind] = st.AppToken(ownApp, kind)
		run.fetches[kind] = run.stats[kind].Fetches
		run.generations[kind] = c.storedGeneration(kind)
	}
	return run
}

func (r clusterRun) log(t *testing.T, what string, d time.Duration) {
	t.Logf("%s: %d requests in %s (%.0f/s) over 3 instances, %d failed", what, r.requests, d, float64(r.requests)/d.Seconds(), r.failed)
	for _, kind := range appKinds {
		s := r.stats[kind]
		t.Logf("  %s: %d fetches, %d generations in storage; platform: %d ok, %d invalid, %d expired, %d killed in their grace",
			kind, r.fetches[kind], r.generations[kind], s.DownstreamOK, s.DownstreamInvalid, s.DownstreamExpired, s.KilledAsThird)
	}
}

// Three instances on one storage, 24 workers for 20 s, 6 s app tokens of
// both kinds: one fetch per generation cluster-wide, no client error, no
// token sent after the platform cut or killed it.
func TestThreeInstancesShareOneAppToken(t *testing.T) {
	c := newAppCluster(t)
	const runFor = 20 * time.Second
	r := runAppCluster(t, c, runFor)
	r.log(t, "storage lock", runFor)
	if r.failed > 0 {
		t.Errorf("%d of %d requests failed; first: %s", r.failed, r.requests, r.first)
	}
	for _, kind := range appKinds {
		if err := checkOneFetchPerGeneration(kind, r.fetches[kind], r.generations[kind]); err != nil {
			t.Error(err)
		}
		s := r.stats[kind]
		if r.generations[kind] < 4 {
			t.Errorf("%s: only %d generations in %s: the tokens did not rotate", kind, r.generations[kind], runFor)
		}
		if s.KilledAsThird != 0 || s.DownstreamExpired != 0 || s.DownstreamInvalid != 0 {
			t.Errorf("%s: a token was sent after the platform cut or killed it: %+v", kind, s)
		}
	}
}

var (
	nolockOnce sync.Once
	nolockBin  string
	nolockErr  error
)

// buildNoLock builds faulttest/cmd/caddy-nolock next to caddyBin, once.
func buildNoLock(t *testing.T) string {
	t.Helper()
	nolockOnce.Do(func() {
		nolockBin = filepath.Join(filepath.Dir(caddyBin), "caddy-nolock")
		out, err := exec.Command("go", "build", "-o", nolockBin, "./cmd/caddy-nolock").CombinedOutput()
		if err != nil {
			nolockErr = fmt.Errorf("building caddy-nolock: %v\n%s", err, out)
		}
	})
	if nolockErr != nil {
		t.Fatal(nolockErr)
	}
	return nolockBin
}

// The same run on a storage whose lock excludes nothing (and fetches slow
// enough to overlap): instances fetch over each other, and the check of the
// run above reports it. This is what that test would see if tptoken fetched
// without the storage lock.
func TestWithoutTheStorageLockInstancesFetchOverEachOther(t *testing.T) {
	c := newAppCluster(t)
	c.bin, c.storeM = buildNoLock(t), "tptoken_test_nolock"
	for _, op := range []string{emulator.OpClientToken, emulator.OpAppAccessToken} {
		if err := c.emu.SetFaults(op, emulator.Faults{Latency: 300 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	const runFor = 12 * time.Second
	r := runAppCluster(t, c, runFor)
	r.log(t, "no storage lock", runFor)
	caught := 0
	for _, kind := range appKinds {
		if err := checkOneFetchPerGeneration(kind, r.fetches[kind], r.generations[kind]); err != nil {
			t.Logf("the check fails, as it must: %v", err)
			caught++
		}
	}
	if caught == 0 {
		t.Fatal("without a storage lock the check still passed: it cannot tell one fetch per generation from several")
	}
}

// A token the platform rejects mid-traffic (another system's fetches killed
// it) is fetched again once cluster-wide, the other instances adopting it from
// storage, and every request is answered: the rejected ones replayed once.
func TestAppTokenRejectedMidTrafficIsReplacedOnce(t *testing.T) {
	c := newAppCluster(t)
	insts := []*instance{c.start(nil), c.start(nil), c.start(nil)}
	l := c.runAppLoad(12, insts)
	// Revoke just after a rotation, so that the token is nowhere near due.
	gen := c.storedGeneration(tokensource.ClientToken)
	eventually(t, 15*time.Second, "a rotation", func() bool {
		g := c.storedGeneration(tokensource.ClientToken)
		return g > gen && g > 1
	})
	if !c.emu.RevokeAppToken(ownApp, tokensource.ClientToken) {
		t.Fatal("nothing to revoke")
	}
	time.Sleep(1500 * time.Millisecond)
	l.stop()
	for _, in := range insts {
		c.stop(in)
	}
	st := c.emu.Stats().AppToken(ownApp, tokensource.ClientToken)
	gens := c.storedGeneration(tokensource.ClientToken)
	rejected, replayed := 0, 0
	for _, in := range insts {
		logs := in.logs()
		rejected += strings.Count(logs, `"reason":"rejected"`)
		replayed += strings.Count(logs, "replaying once with a fresh one")
	}
	t.Logf("%d requests, %d failed; client_token: %d fetches, %d generations, %d rejected by the platform, %d replays, %d fetches because of a rejection",
		l.total, l.failed, st.Fetches, gens, st.DownstreamInvalid, replayed, rejected)
	if l.failed > 0 {
		t.Errorf("%d requests failed; first: %s", l.failed, l.first)
	}
	if st.DownstreamInvalid < 1 || replayed < 1 {
		t.Fatalf("the revoked token was never rejected or replayed: %+v", st)
	}
	if rejected != 1 {
		t.Errorf("%d fetches because of the rejection across the cluster, want 1", rejected)
	}
	if err := checkOneFetchPerGeneration(tokensource.ClientToken, st.Fetches, gens); err != nil {
		t.Error(err)
	}
}

// A fetch refused for rate, or a platform that is down: the current token
// serves until it may no longer be sent (never an expired one), then requests
// get 503 with Retry-After; fetch attempts follow the backoff; it heals.
func TestAppTokenServesThroughRefusalsUntilExpiryThen503(t *testing.T) {
	for _, tc := range []struct {
		name   string
		kind   string
		faults emulator.Faults
		most   int64 // fetch attempts allowed while the fault lasts
	}{
		// 1 + the backoff 0.6 s, 1.2 s, 2.4 s, 3 s (±20%) within ~9 s.
		{"client_token refused for rate", tokensource.ClientToken, emulator.Faults{RateLimited: true}, 7},
		// 3 attempts per operation, then 0.5 s, 1 s, 2 s, 4 s between operations.
		{"client_token platform down", tokensource.ClientToken, emulator.Faults{Down: true}, 20},
		{"app_access_token platform down", tokensource.AppAccessToken, emulator.Faults{Down: true}, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newAppCluster(t)
			a := c.start(nil)
			if r := c.callApp(a, tc.kind); !r.ok(tc.kind) {
				t.Fatalf("warm-up: %s", r)
			}
			issued := time.Now()
			if err := c.emu.SetFaults(tc.kind, tc.faults); err != nil {
				t.Fatal(err)
			}
			calls := c.emu.Stats().Calls[tc.kind]
			var servedUntil, firstError time.Time
			var errResult appResult
			for time.Since(issued) < 9*time.Second {
				r := c.callApp(a, tc.kind)
				switch {
				case r.ok(tc.kind):
					if !firstError.IsZero() {
						t.Fatal("served again after having failed: an expired token was sent?")
					}
					servedUntil = time.Now()
				case firstError.IsZero():
					firstError, errResult = time.Now(), r
				case r.status != 503 || r.retryAfter == "":
					t.Fatalf("after the token's use: %s", r)
				}
				time.Sleep(100 * time.Millisecond)
			}
			attempts := c.emu.Stats().Calls[tc.kind] - calls
			t.Logf("served %s into a 6 s token, then %s; %d fetch attempts meanwhile",
				servedUntil.Sub(issued).Round(100*time.Millisecond), errResult, attempts)
			if firstError.IsZero() {
				t.Fatal("the token outlived its expiry")
			}
			if servedUntil.Sub(issued) < 4*time.Second {
				t.Errorf("served only %s of a 6 s token", servedUntil.Sub(issued))
			}
			if errResult.status != 503 || errResult.tptoken != "unavailable" || errResult.retryAfter == "" {
				t.Errorf("after the token's use: %s, want 503 unavailable with Retry-After", errResult)
			}
			if attempts > tc.most {
				t.Errorf("%d fetch attempts in 9 s, more than the backoff allows (%d)", attempts, tc.most)
			}
			if s := c.emu.Stats().AppToken(ownApp, tc.kind); s.DownstreamExpired != 0 || s.DownstreamInvalid != 0 {
				t.Errorf("a token was sent after its expiry or cut: %+v", s)
			}
			c.emu.ClearFaults()
			healedAt := time.Now()
			eventually(t, 45*time.Second, "healing", func() bool { return c.callApp(a, tc.kind).ok(tc.kind) })
			t.Logf("healed %s after the fault cleared", time.Since(healedAt).Round(100*time.Millisecond))
		})
	}
}
