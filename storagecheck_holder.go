package tptoken

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// The lock holder of check-storage's lock_takeover: a process that takes a
// lock and is then killed, as a crashed instance would be. It must be another
// process: the storages' lock refreshers cannot be stopped from inside one
// (certmagic's FileStorage keeps a lock file fresh from a goroutine that
// belongs to no handle; caddy-storage-redis refreshes until Unlock), so an
// abandoned lock of this process would never go stale. The running binary
// starts itself as `caddy tptoken check-storage-holder` (a test binary
// dispatches on holderEnv in TestMain), reads a holderRequest on standard
// input, takes the lock, prints "locked" and waits to be killed. If it is not
// (its parent died), it releases the lock and exits when its standard input
// closes, or after holderLifetime.

// holderEnv marks the holder process.
const holderEnv = "TPTOKEN_LOCK_HOLDER"

const (
	holderStartTimeout = 30 * time.Second // to start, open the storage and take the lock
	holderLifetime     = 5 * time.Minute
	holderLocked       = "locked"
)

// holderRequest is what the holder reads on its standard input.
type holderRequest struct {
	Storage json.RawMessage `json:"storage"` // the storage module's JSON, with its "module" key
	Lock    string          `json:"lock"`
}

// lockHolder is a running holder process.
type lockHolder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// startLockHolder starts a holder of lock on the storage raw configures and
// returns once it holds the lock.
func startLockHolder(ctx context.Context, raw json.RawMessage, lock string) (*lockHolder, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding the running binary: %v", err)
	}
	req, err := json.Marshal(holderRequest{Storage: raw, Lock: lock})
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "tptoken", "check-storage-holder")
	cmd.Env = append(os.Environ(), holderEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	// cmd.Stderr is nil: the holder's own logs go nowhere.
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %v", exe, err)
	}
	h := &lockHolder{cmd: cmd, stdin: stdin}
	if _, err := stdin.Write(append(req, '\n')); err != nil {
		_, _ = h.kill()
		return nil, fmt.Errorf("writing to the holder process: %v", err)
	}
	line := make(chan string, 1)
	go func() {
		// The holder's answer: "locked" or "error: ...", past anything else a
		// module may print.
		s := bufio.NewScanner(io.LimitReader(stdout, 64<<10))
		text := "it exited without an answer"
		for s.Scan() {
			if t := s.Text(); t == holderLocked || strings.HasPrefix(t, "error: ") {
				text = t
				break
			}
		}
		line <- text
		_, _ = io.Copy(io.Discard, stdout) // until the holder ends
	}()
	timer := time.NewTimer(holderStartTimeout)
	defer timer.Stop()
	select {
	case l := <-line:
		if l == holderLocked {
			return h, nil
		}
		_, _ = h.kill()
		return nil, fmt.Errorf("the holder process (%s) did not take the lock: %s", exe, cut(l, 300))
	case <-timer.C:
		_, _ = h.kill()
		return nil, fmt.Errorf("the holder process (%s) did not take the lock within %s", exe, holderStartTimeout)
	case <-ctx.Done():
		_, _ = h.kill()
		return nil, ctx.Err()
	}
}

// kill kills the holder with SIGKILL, as a crash would, and returns when.
func (h *lockHolder) kill() (time.Time, error) {
	err := h.cmd.Process.Kill()
	at := time.Now()
	_ = h.stdin.Close()
	_ = h.cmd.Wait()
	if err != nil && !errors.Is(err, os.ErrProcessDone) {
		return at, err
	}
	return at, nil
}

// runLockHolder is the holder process: it serves one holderRequest read from
// in and reports on out; its exit status is non-zero when it could not take
// the lock.
func runLockHolder(in io.Reader, out io.Writer) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(out, "error: "+format+"\n", args...)
		return 1
	}
	if os.Getenv(holderEnv) != "1" {
		return fail("this command is started by `caddy tptoken check-storage`, not by hand")
	}
	r := bufio.NewReader(io.LimitReader(in, 1<<20))
	first, err := r.ReadBytes('\n')
	var req holderRequest
	if err != nil || json.Unmarshal(first, &req) != nil || req.Lock == "" || len(req.Storage) == 0 {
		return fail("want a request on standard input")
	}
	st, closeStorage, err := openStorage(req.Storage)
	if err != nil {
		return fail("%s", strings.ReplaceAll(err.Error(), "\n", " "))
	}
	defer closeStorage()
	ctx, cancel := context.WithTimeout(context.Background(), holderStartTimeout)
	err = st.Lock(ctx, req.Lock)
	cancel()
	if err != nil {
		return fail("taking the lock: %s", strings.ReplaceAll(err.Error(), "\n", " "))
	}
	fmt.Fprintln(out, holderLocked)
	closed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, r)
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(holderLifetime):
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = st.Unlock(ctx, req.Lock)
	return 0
}

// cut is s cut to at most n bytes.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
