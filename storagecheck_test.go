package tptoken

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// check-storage (storagecheck.go) against real storages through a real Caddy.

// TestMain makes this test binary the lock holder check-storage starts
// (storagecheck_holder.go): in the end-to-end tests the running binary is
// this one, not a Caddy with a `tptoken check-storage-holder` command.
func TestMain(m *testing.M) {
	if os.Getenv(holderEnv) == "1" {
		os.Exit(runLockHolder(os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

func init() {
	caddy.RegisterModule(localLockStorage{})
}

// localLockStorage is the storage module caddy.storage.tptoken_test_locallock:
// file_system whose locks exclude only the callers of one handle (a mutex per
// handle), not other handles nor other processes: what a storage with a broken
// lock does to a cluster. check-storage must fail it.
type localLockStorage struct {
	*certmagic.FileStorage
	Root string `json:"root"`

	mu    *sync.Mutex
	locks map[string]chan struct{}
}

func (localLockStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "caddy.storage.tptoken_test_locallock", New: func() caddy.Module { return new(localLockStorage) }}
}

func (s *localLockStorage) CertMagicStorage() (certmagic.Storage, error) {
	s.FileStorage = &certmagic.FileStorage{Path: s.Root}
	s.mu, s.locks = new(sync.Mutex), map[string]chan struct{}{}
	return s, nil
}

func (s *localLockStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if !d.NextArg() {
		return d.ArgErr()
	}
	s.Root = d.Val()
	return nil
}

func (s *localLockStorage) lockOf(name string) chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := s.locks[name]
	if ch == nil {
		ch = make(chan struct{}, 1)
		s.locks[name] = ch
	}
	return ch
}

func (s *localLockStorage) Lock(ctx context.Context, name string) error {
	select {
	case s.lockOf(name) <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *localLockStorage) Unlock(_ context.Context, name string) error {
	select {
	case <-s.lockOf(name):
	default:
	}
	return nil
}

func (s *localLockStorage) String() string { return "LocalLockStorage:" + s.Root }

// checkStorageRun is what `check-storage --json` printed, and its exit status.
func (x *e2e) checkStorage(args ...string) (checkStorageJSON, string, int) {
	x.t.Helper()
	out, err := x.cli(append([]string{"check-storage"}, args...)...)
	var res checkStorageJSON
	if strings.Contains(strings.Join(args, " "), "--json") {
		if jerr := json.Unmarshal([]byte(out), &res); jerr != nil {
			x.t.Fatalf("check-storage --json: %v (%v)\n%s", jerr, err, out)
		}
	}
	if err != nil {
		out += "\nerror: " + err.Error()
	}
	return res, out, exitCodeOf(err)
}

func resultOf(res checkStorageJSON, guarantee string) checkLine {
	for _, r := range res.Results {
		if r.Guarantee == guarantee {
			return r
		}
	}
	return checkLine{}
}

// scratchLeft lists what a check left in a file_system folder: keys under
// tptoken/check-storage-*, and lock files of its locks.
func scratchLeft(t *testing.T, root string) []string {
	t.Helper()
	var left []string
	for _, pattern := range []string{"tptoken/check-storage-*", "locks/tptoken.check-storage-*"} {
		m, err := filepath.Glob(filepath.Join(root, pattern))
		if err != nil {
			t.Fatal(err)
		}
		left = append(left, m...)
	}
	return left
}

// On file_system every guarantee holds: a lock excludes a second handle
// beyond the 10 s staleness (its holder keeps it fresh), a killed holder's
// lock is taken over within lock_timeout, and nothing is left behind. (The
// take-over takes 7 to 11 s; lock_timeout is raised to 30s so that a loaded
// machine does not turn the pass into a warn.)
func TestCheckStoragePassesOnFileSystemAndReportsTakeover(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin(), withGlobal("lock_timeout 30s"))
	x.authorize("tt01app")
	res, out, code := x.checkStorage("--json")
	t.Logf("check-storage on file_system: verdict %s in %d ms", res.Verdict, res.TookMS)
	for _, r := range res.Results {
		t.Logf("  %-15s %-7s %6d ms  %s", r.Guarantee, r.Verdict, r.TookMS, r.Detail)
	}
	if code != 0 || res.Verdict != verdictPass {
		t.Fatalf("exit %d, verdict %q:\n%s", code, res.Verdict, out)
	}
	if len(res.Results) != len(storageGuarantees) {
		t.Fatalf("%d results, want one per guarantee: %s", len(res.Results), out)
	}
	for i, g := range storageGuarantees {
		if r := res.Results[i]; r.Guarantee != g || r.Verdict != verdictPass || r.Detail == "" {
			t.Errorf("result %d: %+v, want %s pass with a detail", i, r, g)
		}
	}
	if !strings.HasPrefix(res.Storage, "FileStorage:"+x.storage) || !strings.Contains(res.SecondHandle, x.storage) {
		t.Errorf("storage %q, second handle %q: want both on %s", res.Storage, res.SecondHandle, x.storage)
	}
	takeover := time.Duration(resultOf(res, checkLockTakeover).TakeoverMS) * time.Millisecond
	if takeover <= 0 || takeover > 30*time.Second {
		t.Errorf("take-over after %s, want within lock_timeout (30s)", takeover)
	}
	if excl := resultOf(res, checkLockExclusion); excl.TookMS < defaultCheckHold.Milliseconds() {
		t.Errorf("lock_exclusion took %d ms, less than its hold", excl.TookMS)
	}
	if len(res.CannotProve) == 0 || !strings.Contains(strings.Join(res.CannotProve, " "), "appendonly") {
		t.Errorf("cannot_prove = %q", res.CannotProve)
	}
	if left := scratchLeft(t, x.storage); len(left) > 0 {
		t.Errorf("the check left %v", left)
	}
	// The tptoken records are untouched, and the authorizer serves.
	if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 || a.Data.AppID != "tt01app" {
		t.Fatalf("after the check: %+v", a)
	}
	m := defaultMetrics()
	for _, g := range storageGuarantees {
		if v := testutil.ToFloat64(m.storageCheck.WithLabelValues(g, verdictPass)); v != 1 {
			t.Errorf("caddy_tptoken_storage_check{guarantee=%q,verdict=\"pass\"} = %v", g, v)
		}
	}
	if v := testutil.ToFloat64(m.storageTakeover.WithLabelValues()); v <= 0 || v > 30 {
		t.Errorf("caddy_tptoken_storage_takeover_seconds = %v", v)
	}
}

// A storage whose lock does not exclude another handle fails lock_exclusion,
// with a verdict that says what it costs; the other guarantees are still
// reported; the exit status is 1.
func TestCheckStorageFailsOnALockThatDoesNotExclude(t *testing.T) {
	root := t.TempDir()
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin(), withGlobal("storage tptoken_test_locallock "+root))
	x.authorize("tt01app")
	_, out, code := x.checkStorage()
	t.Logf("check-storage on a lock that does not exclude:\n%s", out)
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	rows := map[string]string{} // guarantee → its row of the table
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			if _, ok := verdictRank[f[1]]; ok {
				rows[f[0]] = line
			}
		}
	}
	if r := rows[checkLockExclusion]; !strings.Contains(r, " fail ") || !strings.Contains(r, "handle B took the lock") ||
		!strings.Contains(r, "burn its refresh token") {
		t.Errorf("lock_exclusion row %q: want a failure naming the cost", r)
	}
	for _, g := range []string{checkRoundTrip, checkVisibility, checkList, checkCleanup} {
		if !strings.Contains(rows[g], " pass ") {
			t.Errorf("%s row %q: want pass", g, rows[g])
		}
	}
	if !strings.Contains(rows[checkLockTakeover], " skipped ") {
		t.Errorf("lock_takeover row %q: want skipped", rows[checkLockTakeover])
	}
	for _, want := range []string{"LocalLockStorage:" + root, "Verdict: fail", "the storage failed lock_exclusion"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if left := scratchLeft(t, root); len(left) > 0 {
		t.Errorf("the check left %v", left)
	}
	if v := testutil.ToFloat64(defaultMetrics().storageCheck.WithLabelValues(checkLockExclusion, verdictFail)); v != 1 {
		t.Errorf("caddy_tptoken_storage_check{guarantee=\"lock_exclusion\",verdict=\"fail\"} = %v", v)
	}
	if !strings.Contains(x.debugLog(), "storage check failed") {
		t.Error("the failed check was not logged")
	}
}

// A client that goes away in the middle of a check interrupts it, and the
// check still removes its scratch keys and releases its locks; a second check
// meanwhile is refused (409).
func TestCheckStorageCleansUpWhenInterrupted(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+x.admin+"/tptoken/check-storage?hold=30s", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Origin", "http://"+x.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "application/x-ndjson" {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, ct)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() { // until the check is in lock_exclusion
		var l checkLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		if l.Guarantee == checkList {
			break
		}
	}
	if left := scratchLeft(t, x.storage); len(left) == 0 {
		t.Fatal("no scratch keys or lock during the check: the test would prove nothing")
	}
	x.adminError(http.MethodPost, "/tptoken/check-storage", "", http.StatusConflict, "already running")
	cancel()
	deadline := time.Now().Add(15 * time.Second)
	for len(scratchLeft(t, x.storage)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after the interruption, still there: %v", scratchLeft(t, x.storage))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The check ended: another one may start.
	deadline = time.Now().Add(15 * time.Second)
	for storageCheckRunning.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the interrupted check did not end")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(x.debugLog(), "storage check interrupted") {
		t.Error("the interruption was not logged")
	}
	x.adminError(http.MethodPost, "/tptoken/check-storage?hold=1h", "", http.StatusBadRequest, "hold")
}

// The second handle is provisioned from tptoken's own storage option, or
// from Caddy's storage when it is file_system or a module that is its own
// storage; any other storage gets no second handle, and a reason saying what
// to configure.
func TestCheckStorageOpensASecondHandleOfTheConfiguredStorage(t *testing.T) {
	root := t.TempDir()
	mod := &localLockStorage{Root: root}
	modStorage, _ := mod.CertMagicStorage()
	for _, tc := range []struct {
		name string
		raw  string
		st   certmagic.Storage
		want string // describeStorage of the second handle; "" none
	}{
		{"tptoken's storage option", `{"module":"tptoken_test_locallock","root":"` + root + `"}`, modStorage, "LocalLockStorage:" + root},
		{"Caddy's file_system", "", &certmagic.FileStorage{Path: root}, "FileStorage:" + root},
		{"Caddy's storage, a module", "", modStorage, "LocalLockStorage:" + root},
		{"Caddy's storage, something else", "", struct{ certmagic.Storage }{modStorage}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var raw json.RawMessage
			if tc.raw != "" {
				raw = json.RawMessage(tc.raw)
			}
			target := newStorageTarget(raw, tc.st, []*Component{{LockTimeout: caddy.Duration(20 * time.Second)}, {}})
			if target.lockTimeout != 20*time.Second {
				t.Errorf("lock timeout %s, want the smallest configured (20s)", target.lockTimeout)
			}
			if tc.want == "" {
				if target.raw != nil || !strings.Contains(target.why, "set the storage inside the tptoken block") {
					t.Fatalf("raw %s, why %q", target.raw, target.why)
				}
				return
			}
			b, closeB, err := openStorage(target.raw)
			if err != nil {
				t.Fatalf("opening %s: %v", target.raw, err)
			}
			defer closeB()
			if got := describeStorage(b); got != tc.want {
				t.Fatalf("second handle %q, want %q", got, tc.want)
			}
			if b == tc.st {
				t.Fatal("the second handle is the first one")
			}
		})
	}
}
