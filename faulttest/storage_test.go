//go:build linux

package faulttest

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// readOnlyStorage makes the storage folder unwritable for the Caddy instances.
// Tests usually run as root, whom permissions do not stop, so instances then
// run as nobody (uid 65534) and own the folder until it is made read-only.
type readOnlyStorage struct {
	t    *testing.T
	dir  string
	user *syscall.Credential
}

func newReadOnlyStorage(t *testing.T, c *cluster) *readOnlyStorage {
	r := &readOnlyStorage{t: t, dir: c.storage}
	if os.Geteuid() == 0 {
		r.user = &syscall.Credential{Uid: 65534, Gid: 65534}
		for _, d := range []string{c.storage, c.base} { // let nobody reach the temp folders
			for p := d; p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
				_ = os.Chmod(p, 0o755)
			}
		}
		r.chown()
	}
	return r
}

func (r *readOnlyStorage) chown() {
	if r.user == nil {
		return
	}
	_ = filepath.WalkDir(r.dir, func(p string, _ fs.DirEntry, err error) error {
		if err == nil {
			_ = os.Chown(p, int(r.user.Uid), int(r.user.Gid))
		}
		return nil
	})
}

func (r *readOnlyStorage) set(readOnly bool) {
	_ = filepath.WalkDir(r.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		mode := fs.FileMode(0o600)
		if d.IsDir() {
			mode = 0o700
		}
		if readOnly {
			mode &^= 0o200
		}
		_ = os.Chmod(p, mode)
		return nil
	})
	r.chown()
}

// Storage turns read-only in a cluster deployment: the instance serves the
// token it holds in memory, refuses to refresh without the lock (loudly), fails
// with 503 only once that token has expired, and heals when storage is back.
// No refresh token is lost.
func TestReadOnlyStorageServesFromMemoryAndLosesNothing(t *testing.T) {
	c := newCluster(t, tokensource.V1, emulator.Lifetimes{AccessTokenTTL: 6 * time.Second}, "refresh_ahead 2s")
	ro := newReadOnlyStorage(t, c)
	a := c.start(ro.user)
	c.pushTo(a)
	c.authorize("tt01ro")
	if r := c.call(a, "tt01ro", ""); !r.ok("tt01ro") {
		t.Fatalf("warm-up: %s", r)
	}
	ro.set(true)
	start := time.Now()
	var servedFor time.Duration
	var failure result
	for time.Since(start) < 8*time.Second {
		r := c.call(a, "tt01ro", "")
		if r.ok("tt01ro") {
			if failure.status != 0 {
				t.Fatal("served again after failing while storage is still read-only")
			}
			servedFor = time.Since(start)
		} else if failure.status == 0 {
			failure = r
		}
		time.Sleep(100 * time.Millisecond)
	}
	if servedFor < 3*time.Second {
		t.Fatalf("served from memory only %s", servedFor)
	}
	if failure.status != 503 || failure.kind != "unavailable" {
		t.Fatalf("after the token expired: %s, want 503 unavailable", failure)
	}
	if !strings.Contains(a.logs(), "refusing to refresh without it") {
		t.Fatal("the storage failure was not reported loudly")
	}
	ro.set(false)
	eventually(t, 30*time.Second, "healing once storage is writable", func() bool { return c.call(a, "tt01ro", "").ok("tt01ro") })
	if st := c.emu.Stats().App("tt01ro"); st.Refresh40021 != 0 || st.Retrieves != 0 {
		t.Fatalf("a refresh token was lost: %+v", st)
	}
	t.Logf("read-only storage (cluster mode): served %s from memory, then %s; healed", servedFor.Round(100*time.Millisecond), failure)
}

// Same fault with single_instance: the instance refreshes without the storage
// lock, keeps the rotated pair in memory (reporting that it cannot store it),
// serves past the old token's expiry, and writes the pair once storage is
// back: a restart after that needs no re-authorization.
func TestReadOnlyStorageSingleInstanceKeepsRotatingInMemory(t *testing.T) {
	c := newCluster(t, tokensource.V2, emulator.Lifetimes{AccessTokenTTL: 4 * time.Second}, "refresh_ahead 1s\n\t\tsingle_instance")
	ro := newReadOnlyStorage(t, c)
	a := c.start(ro.user)
	c.pushTo(a)
	c.authorize("tt01mem")
	ro.set(true)
	deadline := time.Now().Add(10 * time.Second) // 2.5 token lifetimes on a read-only folder
	for time.Now().Before(deadline) {
		if r := c.call(a, "tt01mem", ""); !r.ok("tt01mem") {
			t.Fatalf("with single_instance a read-only storage must not fail requests: %s", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(a.logs(), "STORING THE ROTATED TOKENS FAILED") {
		t.Fatal("the failed writes were not reported loudly")
	}
	rotations := c.emu.Stats().App("tt01mem").Refreshes
	if rotations < 2 {
		t.Fatalf("only %d refreshes in 10 s of 4 s tokens", rotations)
	}
	ro.set(false)
	eventually(t, 30*time.Second, "the in-memory pair written", func() bool {
		return strings.Contains(a.logs(), "unsaved in-memory record stored") || c.emu.Stats().App("tt01mem").Refreshes > rotations
	})
	time.Sleep(500 * time.Millisecond)
	c.kill(a)
	b := c.start(ro.user)
	time.Sleep(4 * time.Second) // the stored token expires: b must refresh with the stored refresh token
	if r := c.call(b, "tt01mem", ""); !r.ok("tt01mem") {
		t.Fatalf("after a restart: %s", r)
	}
	if st := c.emu.Stats().App("tt01mem"); st.Refresh40021 != 0 || st.Retrieves != 0 || st.Exchanges != 1 {
		t.Fatalf("a refresh token was lost while storage was read-only: %+v", st)
	}
}
