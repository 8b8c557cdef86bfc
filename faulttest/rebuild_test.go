//go:build linux

package faulttest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// Disaster recovery through the real binary: the storage deleted under load,
// restored from an old backup, or empty at start, and `caddy tptoken
// rebuild` (the built binary's CLI) against the instances' admin endpoints.

// cliRun is one `caddy tptoken ...` process.
type cliRun struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
}

func (c *cluster) cli(in *instance, args ...string) *cliRun {
	c.t.Helper()
	r := &cliRun{cmd: exec.Command(caddyBin, append(append([]string{"tptoken"}, args...), "--address", in.admin)...)}
	r.cmd.Env = append(os.Environ(), "HOME="+in.home)
	r.cmd.Stdout, r.cmd.Stderr = &r.stdout, &r.stderr
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	return r
}

// wait returns the exit status.
func (r *cliRun) wait(t *testing.T) int {
	t.Helper()
	err := r.cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

var countsLine = regexp.MustCompile(`(?m)^(\d+) authorizers: (.*)$`)

// counts reads the counts line a rebuild printed ("rebuilt 3, unchanged 9, ...").
func (r *cliRun) counts(t *testing.T) map[string]int {
	t.Helper()
	m := countsLine.FindStringSubmatch(r.stdout.String())
	if m == nil {
		t.Fatalf("no counts line in:\n%s\nstderr:\n%s", r.stdout.String(), r.stderr.String())
	}
	out := map[string]int{}
	for _, part := range strings.Split(m[2], ", ") {
		name, n, _ := strings.Cut(part, " ")
		out[name], _ = strconv.Atoi(n)
	}
	return out
}

// serveAll waits until every appid is served through in.
func (c *cluster) serveAll(in *instance, ids []string) {
	c.t.Helper()
	for _, id := range ids {
		var r result
		eventually(c.t, 20*time.Second, id+" served by instance "+strconv.Itoa(in.n), func() bool {
			r = c.call(in, id, "")
			return r.ok(id)
		})
	}
}

// recordFiles are the storage files of the records of ids, under the component's folder.
func recordFiles(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = filepath.Join("authorizers", id+".json")
	}
	return out
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		if strings.HasSuffix(p, ".lock") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The whole storage folder is deleted while two instances serve: requests
// keep being served from memory, the instances write back the records they
// hold, and `caddy tptoken rebuild`, run on both instances at once,
// retrieves and exchanges the others exactly once each. A new instance then
// serves every authorizer from storage; no authorization was needed.
func TestStorageDeletedUnderLoadRebuildRestoresEveryAuthorizer(t *testing.T) {
	c := newCluster(t, tokensource.V1, emulator.Lifetimes{}, "")
	c.adminEach = true
	// The idle authorizers are exchanged by an instance that is gone: no
	// running instance holds them in memory.
	gone := c.start(nil)
	c.pushTo(gone)
	loaded, idle := appids(6), []string{}
	for i := range 6 {
		idle = append(idle, fmt.Sprintf("tt%02didle", i))
	}
	c.authorize(idle...)
	c.stop(gone)
	a, b := c.start(nil), c.start(nil)
	c.pushTo(a)
	c.authorize(loaded...)
	l := c.runLoad(16, []*instance{a, b}, loaded)
	time.Sleep(time.Second) // both instances hold every loaded authorizer

	// Deleted at once, as a lost volume would be (a RemoveAll could meet files written meanwhile).
	if err := os.Rename(c.storage, c.storage+".lost"); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	if err := os.RemoveAll(c.storage + ".lost"); err != nil {
		t.Fatal(err)
	}
	// The instances write back what they hold in memory: the ticket and the
	// component token (within maintain's 15 s), and each authorizer in use
	// (once its record is reloaded, every 30 s of use).
	dir := filepath.Join(c.storage, "tptoken", component)
	eventually(t, 60*time.Second, "the ticket and the authorizers in use written back", func() bool {
		for _, f := range append([]string{"ticket.json"}, recordFiles(loaded)...) {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				return false
			}
		}
		return true
	})
	writtenBack := time.Since(deleted)
	ra, rb := c.cli(a, "rebuild", "--rate", "5"), c.cli(b, "rebuild", "--rate", "5")
	codeA, codeB := ra.wait(t), rb.wait(t)
	took := time.Since(deleted) - writtenBack
	time.Sleep(time.Second)
	results := l.finish()

	if codeA != 0 || codeB != 0 {
		t.Fatalf("rebuild exit %d and %d\n%s\n%s\n%s\n%s", codeA, codeB, ra.stdout.String(), ra.stderr.String(), rb.stdout.String(), rb.stderr.String())
	}
	ca, cb := ra.counts(t), rb.counts(t)
	var total, failed int
	var firstFailure string
	for id, rs := range results {
		for _, r := range rs {
			total++
			if !r.ok(id) {
				failed++
				if firstFailure == "" {
					firstFailure = id + ": " + r.String()
				}
			}
		}
	}
	st := c.emu.Stats()
	t.Logf("storage deleted under load (%d requests, %d failed); the authorizers in use written back after %s; then two rebuilds at once in %s: instance 0 %v, instance 1 %v",
		total, failed, writtenBack.Round(100*time.Millisecond), took.Round(10*time.Millisecond), ca, cb)
	for _, id := range loaded {
		t.Logf("%s (in memory): %+v", id, st.App(id))
	}
	for _, id := range idle {
		t.Logf("%s (idle): %+v", id, st.App(id))
	}
	if failed > 0 {
		t.Errorf("%d of %d requests failed while the storage was gone; first: %s", failed, total, firstFailure)
	}
	if ca["rebuilt"]+cb["rebuilt"] != len(idle) || ca["unchanged"]+cb["unchanged"] != 2*len(loaded)+len(idle) || ca["failed"]+cb["failed"] != 0 {
		t.Errorf("results: rebuilt %d, unchanged %d: want the %d idle authorizers rebuilt once across both runs, the rest unchanged",
			ca["rebuilt"]+cb["rebuilt"], ca["unchanged"]+cb["unchanged"], len(idle))
	}
	for _, id := range idle {
		if s := st.App(id); s.Exchanges != 2 || s.Retrieves != 1 {
			t.Errorf("%s: %d exchanges, %d retrieves: want one rebuild exchange after the first one", id, s.Exchanges, s.Retrieves)
		}
	}
	for _, id := range loaded {
		if s := st.App(id); s.Exchanges != 1 || s.Retrieves != 0 {
			t.Errorf("%s: %d exchanges, %d retrieves: an authorizer held in memory is written back, not exchanged again", id, s.Exchanges, s.Retrieves)
		}
	}
	if st.Total.Refresh40021 != 0 {
		t.Errorf("%d refreshes refused with 40021", st.Total.Refresh40021)
	}
	if !strings.Contains(a.logs()+b.logs(), "storage lacks this authorizer's newest record") {
		t.Error("the write-back was not logged")
	}
	// A new instance, with nothing in memory, serves every authorizer from storage.
	fresh := c.start(nil)
	c.serveAll(fresh, append(append([]string(nil), loaded...), idle...))
	// A second run changes nothing.
	again := c.cli(a, "rebuild")
	if code := again.wait(t); code != 0 || again.counts(t)["unchanged"] != len(loaded)+len(idle) {
		t.Fatalf("second run: exit %d\n%s", code, again.stdout.String())
	}
	if after := c.emu.Stats().Total; after.Exchanges != st.Total.Exchanges || after.Retrieves != st.Total.Retrieves {
		t.Fatal("the second run exchanged again")
	}
}

// A storage restored from an old backup (every refresh token spent): both
// instances run `rebuild --verify` at once, and each authorizer is recovered
// exactly once (one 40021, one retrieve, one exchange), then serves.
func TestRestoredOldBackupRebuildVerifyRecoversEachOnce(t *testing.T) {
	c := newCluster(t, tokensource.V2, emulator.Lifetimes{AccessTokenTTL: 4 * time.Second}, "refresh_ahead 1s")
	c.adminEach = true
	a, b := c.start(nil), c.start(nil)
	c.pushTo(a)
	ids := appids(6)
	c.authorize(ids...)
	backup := t.TempDir()
	copyDir(t, c.storage, backup)
	l := c.runLoad(8, []*instance{a, b}, ids)
	eventually(t, 30*time.Second, "two rotations of every authorizer", func() bool {
		st := c.emu.Stats()
		for _, id := range ids {
			if st.App(id).Refreshes < 2 {
				return false
			}
		}
		return true
	})
	l.finish()
	c.stop(a)
	c.stop(b)
	if err := os.RemoveAll(c.storage); err != nil {
		t.Fatal(err)
	}
	copyDir(t, backup, c.storage)
	before := c.emu.Stats()
	a, b = c.start(nil), c.start(nil)
	c.pushTo(a)
	start := time.Now()
	ra, rb := c.cli(a, "rebuild", "--verify", "--rate", "10"), c.cli(b, "rebuild", "--verify", "--rate", "10")
	codeA, codeB := ra.wait(t), rb.wait(t)
	if codeA != 0 || codeB != 0 {
		t.Fatalf("rebuild --verify exit %d and %d\n%s%s\n%s%s", codeA, codeB, ra.stdout.String(), ra.stderr.String(), rb.stdout.String(), rb.stderr.String())
	}
	ca, cb := ra.counts(t), rb.counts(t)
	st := c.emu.Stats()
	t.Logf("restored backup, rebuild --verify on two instances at once in %s: %v and %v", time.Since(start).Round(10*time.Millisecond), ca, cb)
	if ca["recovered"]+cb["recovered"] != len(ids) {
		t.Errorf("recovered %d, want %d", ca["recovered"]+cb["recovered"], len(ids))
	}
	for _, id := range ids {
		s, s0 := st.App(id), before.App(id)
		if s.Refresh40021-s0.Refresh40021 != 1 || s.Retrieves-s0.Retrieves != 1 || s.Exchanges-s0.Exchanges != 1 {
			t.Errorf("%s: %d 40021s, %d retrieves, %d exchanges: want one of each", id,
				s.Refresh40021-s0.Refresh40021, s.Retrieves-s0.Retrieves, s.Exchanges-s0.Exchanges)
		}
	}
	c.serveAll(a, ids)
	c.serveAll(b, ids)
}

// Two instances with rebuild_on_empty start on an empty storage while the
// platform lists authorizers whose pushes never arrived: one of them
// rebuilds (logged loudly), once; every authorizer serves; restarted, they
// find the marker and do nothing.
func TestRebuildOnEmptyStoreRunsOncePerCluster(t *testing.T) {
	c := newCluster(t, tokensource.V1, emulator.Lifetimes{}, "rebuild_on_empty\n\t\tsweep_interval 3s")
	ids := appids(8)
	for _, id := range ids {
		if _, err := c.emu.Authorize(id, false); err != nil {
			t.Fatal(err)
		}
	}
	a, b := c.start(nil), c.start(nil)
	c.pushTo(a)
	start := time.Now()
	c.serveAll(b, ids)
	t.Logf("rebuild_on_empty: %d authorizers serve %s after the instances started", len(ids), time.Since(start).Round(100*time.Millisecond))
	loud := func() int {
		n := 0
		for _, in := range c.insts {
			n += strings.Count(in.logs(), "NO AUTHORIZER RECORDS IN STORAGE")
		}
		return n
	}
	eventually(t, 20*time.Second, "the done marker", func() bool {
		b, err := os.ReadFile(filepath.Join(c.storage, "tptoken", component, "rebuild.json"))
		return err == nil && bytes.Contains(b, []byte(`"state":"done"`))
	})
	if n := loud(); n != 1 {
		t.Fatalf("%d instances announced the rebuild, want 1", n)
	}
	st := c.emu.Stats()
	for _, id := range ids {
		if s := st.App(id); s.Exchanges != 1 || s.Retrieves != 1 {
			t.Errorf("%s: %+v: want one retrieve and one exchange", id, s)
		}
	}
	c.stop(a)
	c.stop(b)
	a, b = c.start(nil), c.start(nil)
	c.pushTo(a)
	for _, in := range []*instance{a, b} {
		eventually(t, 20*time.Second, "the restarted instance found the done marker", func() bool {
			return strings.Contains(in.logs(), "rebuild_on_empty: a finished rebuild is on record")
		})
	}
	if after := c.emu.Stats().Total; after.Exchanges != st.Total.Exchanges || after.Retrieves != st.Total.Retrieves || loud() != 1 {
		t.Fatalf("restarted instances rebuilt again: %d exchanges, %d announcements", after.Exchanges-st.Total.Exchanges, loud())
	}
	c.serveAll(a, ids)
}

// Ctrl-C in the middle of a rebuild: exit 130 with what to do; the
// operations in flight finish on the server; the rerun does the rest and no
// authorizer is exchanged twice.
func TestRebuildInterruptedByCtrlCIsSafeToRerun(t *testing.T) {
	c := newCluster(t, tokensource.V2, emulator.Lifetimes{}, "")
	c.adminEach = true
	a := c.start(nil)
	c.pushTo(a)
	ids := appids(10)
	for _, id := range ids {
		if _, err := c.emu.Authorize(id, false); err != nil {
			t.Fatal(err)
		}
	}
	run := c.cli(a, "rebuild", "--rate", "2")
	eventually(t, 20*time.Second, "three authorizers rebuilt", func() bool { return c.emu.Stats().Total.Exchanges >= 3 })
	if err := run.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	code := run.wait(t)
	if code != 130 || !strings.Contains(run.stderr.String(), "interrupted after") || !strings.Contains(run.stderr.String(), "rerunning is safe") {
		t.Fatalf("interrupted: exit %d\n%s\n%s", code, run.stdout.String(), run.stderr.String())
	}
	done := c.emu.Stats().Total.Exchanges // and perhaps one in flight, which finishes on the server
	if done >= int64(len(ids)) {
		t.Fatalf("the run was not interrupted: %d exchanged", done)
	}
	again := c.cli(a, "rebuild", "--rate", "10")
	if code := again.wait(t); code != 0 {
		t.Fatalf("rerun: exit %d\n%s%s", code, again.stdout.String(), again.stderr.String())
	}
	counts := again.counts(t)
	st := c.emu.Stats()
	t.Logf("interrupted after %d exchanges; the rerun: %v", done, counts)
	if counts["rebuilt"]+counts["unchanged"] != len(ids) || counts["unchanged"] < int(done) || counts["rebuilt"] < 1 {
		t.Errorf("rerun counts %v after %d were done", counts, done)
	}
	for _, id := range ids {
		if s := st.App(id); s.Exchanges != 1 {
			t.Errorf("%s exchanged %d times", id, s.Exchanges)
		}
	}
	c.serveAll(a, ids)
}

// legacyTokens has each appid authorize the TP and exchanges its code as a
// legacy token store would (api v1), returning the refresh tokens.
func (c *cluster) legacyTokens(ids []string) map[string]string {
	c.t.Helper()
	get := func(path string, q url.Values, out any) {
		c.t.Helper()
		resp, err := http.Get(c.emuURL + path + "?" + q.Encode())
		if err != nil {
			c.t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			c.t.Fatal(err)
		}
	}
	var ct struct {
		Token string `json:"component_access_token"`
	}
	get(emulator.PathV1ComponentToken, url.Values{"component_appid": {component}, "component_appsecret": {secret},
		"component_ticket": {c.emu.Ticket()}}, &ct)
	out := map[string]string{}
	for _, id := range ids {
		code, err := c.emu.Authorize(id, false)
		if err != nil {
			c.t.Fatal(err)
		}
		var g struct {
			RefreshToken string `json:"authorizer_refresh_token"`
		}
		get(emulator.PathV1OAuthToken, url.Values{"component_appid": {component}, "component_access_token": {ct.Token},
			"authorization_code": {code}, "grant_type": {emulator.GrantCode}}, &g)
		if g.RefreshToken == "" {
			c.t.Fatalf("no legacy refresh token for %s", id)
		}
		out[id] = g.RefreshToken
	}
	return out
}

// Ctrl-C in the middle of an import: exit 130; rows not sent are reported
// "not attempted", rows in flight finish on the server; importing the file
// again imports the rest, and every legacy refresh token is used exactly once.
func TestImportInterruptedByCtrlCIsSafeToRerun(t *testing.T) {
	c := newCluster(t, tokensource.V1, emulator.Lifetimes{}, "")
	c.adminEach = true
	a := c.start(nil)
	c.pushTo(a)
	ids := appids(24)
	tokens := c.legacyTokens(ids)
	var csv strings.Builder
	for _, id := range ids {
		csv.WriteString(id + "," + tokens[id] + "\n")
	}
	file := filepath.Join(t.TempDir(), "legacy.csv")
	if err := os.WriteFile(file, []byte(csv.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.emu.SetFaults(emulator.OpRefresh, emulator.Faults{Latency: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	run := c.cli(a, "import", file, "--batch", "4")
	eventually(t, 30*time.Second, "six rows imported", func() bool { return c.emu.Stats().Total.Refreshes >= 6 })
	if err := run.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	code := run.wait(t)
	out := run.stdout.String()
	if code != 130 || !strings.Contains(run.stderr.String(), "interrupted after") || !strings.Contains(out, "not attempted: interrupted") {
		t.Fatalf("interrupted import: exit %d\n%s\n%s", code, out, run.stderr.String())
	}
	if strings.Contains(out+run.stderr.String(), tokens[ids[0]]) {
		t.Fatal("the import printed a refresh token")
	}
	c.emu.ClearFaults()
	again := c.cli(a, "import", file)
	if code := again.wait(t); code != 0 {
		t.Fatalf("import again: exit %d\n%s%s", code, again.stdout.String(), again.stderr.String())
	}
	st := c.emu.Stats()
	summary := regexp.MustCompile(`24 rows: imported (\d+), recovered 0, unchanged (\d+), skipped 0, failed 0`).FindStringSubmatch(again.stdout.String())
	t.Logf("import interrupted, then run again: %v; %d refreshes for %d rows", summary, st.Total.Refreshes, len(ids))
	if summary == nil {
		t.Fatalf("second import:\n%s", again.stdout.String())
	}
	for _, id := range ids {
		if s := st.App(id); s.Refreshes != 1 || s.Refresh40021 != 0 {
			t.Errorf("%s: %d refreshes, %d refused with 40021: each legacy token must be used once", id, s.Refreshes, s.Refresh40021)
		}
	}
	c.serveAll(a, ids)
}
