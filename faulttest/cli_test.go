//go:build linux

package faulttest

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The exit status a script sees from the built binary (./cmd/caddy): typos and
// invalid values fail, status --check fails with 2 when the TP is unhealthy,
// check-storage passes on file_system, its lock holder being the built binary
// started again as `caddy tptoken check-storage-holder`.
func TestCLIExitStatusOfTheBuiltBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	run := func(args ...string) (int, string) {
		t.Helper()
		cmd := exec.Command(caddyBin, append([]string{"tptoken"}, args...)...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			return ee.ExitCode(), string(out)
		case err != nil:
			t.Fatal(err)
		}
		return 0, string(out)
	}
	closed := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	for _, c := range []struct {
		args    []string
		code    int
		mention string
	}{
		{[]string{"stauts"}, 1, "did you mean status"},
		{[]string{}, 1, "a subcommand is required"},
		{[]string{"status", "--state", "broken", "--address", closed}, 1, "active, needs_recovery, unauthorized"},
		{[]string{"status", "--address", closed}, 1, "is Caddy running"},
	} {
		code, out := run(c.args...)
		if code != c.code || !strings.Contains(out, c.mention) {
			t.Errorf("caddy tptoken %s: exit %d, want %d mentioning %q:\n%s", strings.Join(c.args, " "), code, c.code, c.mention, out)
		}
	}

	// A running Caddy whose TP never got a ticket: status works (0), --check says not healthy (2).
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dir := t.TempDir()
	cfg := filepath.Join(dir, "caddy.json")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`{"admin": {"listen": %q}, "storage": {"module": "file_system", "root": %q},
		"apps": {"tptoken": {"components": [{"component_appid": "tt00clitest", "component_appsecret": "{env.TPT_SECRET}",
		"endpoint": "http://127.0.0.1:9", "encryption_key": "{env.TPT_KEY}"}]}}}`, admin, dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	caddy := exec.Command(caddyBin, "run", "--config", cfg)
	caddy.Env = append(os.Environ(), "TPT_SECRET=cli-test-secret", "TPT_KEY=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
		"HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	caddy.Stdout, caddy.Stderr = nil, nil
	if err := caddy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = caddy.Process.Kill()
		_ = caddy.Wait()
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, "http://"+admin+"/tptoken/component", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("caddy did not answer on its admin address")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, out := run("status", "--address", admin); code != 0 || !strings.Contains(out, "tt00clitest") {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	if code, out := run("status", "--check", "--address", admin); code != 2 || !strings.Contains(out, "NOT HEALTHY") ||
		!strings.Contains(out, "no component_ticket received yet") {
		t.Fatalf("status --check without a ticket: exit %d, want 2\n%s", code, out)
	}
	code, out := run("check-storage", "--address", admin, "--hold", "2s") // the lease is tested in-process (TestCheckStoragePasses...)
	t.Logf("caddy tptoken check-storage:\n%s", out)
	if code != 0 || !strings.Contains(out, "Verdict: pass") {
		t.Fatalf("check-storage: exit %d, want 0 and a pass\n%s", code, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == "lock_takeover" && (f[1] != "pass" || !strings.Contains(line, "taken over")) {
			t.Fatalf("lock_takeover through the built binary: %s", line)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "locks", "tptoken.check-storage-*")); len(left) > 0 {
		t.Fatalf("check-storage left lock files: %v", left)
	}
}
