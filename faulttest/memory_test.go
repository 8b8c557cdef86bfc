//go:build linux

package faulttest

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// heapInUse is the Go heap in use of a Caddy process, in bytes, from its admin
// endpoint's metrics (go_memstats_heap_inuse_bytes).
func heapInUse(t *testing.T, admin string) int64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "go_memstats_heap_inuse_bytes "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("go_memstats_heap_inuse_bytes %q: %v", v, err)
			}
			return int64(f)
		}
	}
	t.Fatalf("no go_memstats_heap_inuse_bytes in the metrics (HTTP %d)", resp.StatusCode)
	return 0
}

// rss is the resident memory of a process, in bytes (/proc/<pid>/status VmRSS).
func rss(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/<pid>/status")
	return 0
}

// A request costs memory for the body bytes that arrived, never for the
// Content-Length it announces: 1,000 connections announcing 1 MiB bodies and
// sending one byte keep a real Caddy's memory bounded. Both routes are
// covered: the authorizer route (appid header) and a token component route,
// which needs no appid at all. The bound is on the Go heap in use (the admin
// endpoint's metrics): memory taken but never written is not resident until
// it is reused, so RSS alone can hide what an announced length reserves; both
// are reported.
func TestIdleConnectionsAnnouncingLargeBodiesHoldLittleMemory(t *testing.T) {
	const conns = 1000
	c := newCluster(t, tokensource.V1, emulator.Lifetimes{}, "")
	c.level = "DEBUG" // the handler's "token resolved" line tells when every request waits for its body
	c.admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c.handler = `route /component/* {
		tptoken {
			token component
		}
		reverse_proxy ` + c.emuURL + ` {
			transport tptoken
		}
	}
	tptoken`
	in := c.start(nil)
	c.pushTo(in)
	c.authorize("tt01app")
	if r := c.call(in, "tt01app", `{"warm":true}`); !r.ok("tt01app") {
		t.Fatalf("warm-up request: %s", r)
	}
	pid := in.cmd.Process.Pid
	time.Sleep(500 * time.Millisecond) // let the start-up garbage settle before the baseline
	rssBefore, heapBefore := rss(t, pid), heapInUse(t, c.admin)
	resolved := strings.Count(in.logs(), "token resolved")

	host := strings.TrimPrefix(in.proxy, "http://")
	open := make([]net.Conn, 0, conns)
	t.Cleanup(func() {
		for _, cn := range open {
			_ = cn.Close()
		}
	})
	for i := range conns {
		cn, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		open = append(open, cn)
		head := "POST /openapi/v1/microapp/app/info HTTP/1.1\r\nHost: " + host + "\r\nX-Authorizer-Appid: tt01app\r\n"
		if i%2 == 1 {
			head = "POST /component/openapi/v1/auth/app/list HTTP/1.1\r\nHost: " + host + "\r\n"
		}
		head += "Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{"
		if _, err := cn.Write([]byte(head)); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	eventually(t, 60*time.Second, "every request waiting for its body", func() bool {
		return strings.Count(in.logs(), "token resolved")-resolved >= conns
	})
	rssPeak, heapPeak := rssBefore, heapBefore
	for range 10 {
		time.Sleep(200 * time.Millisecond)
		rssPeak, heapPeak = max(rssPeak, rss(t, pid)), max(heapPeak, heapInUse(t, c.admin))
	}
	grew := heapPeak - heapBefore
	t.Logf("%d idle connections announcing 1 MiB bodies: heap in use %d MiB -> %d MiB (+%d MiB, %d KiB per connection); RSS %d MiB -> %d MiB",
		conns, heapBefore>>20, heapPeak>>20, grew>>20, grew/conns>>10, rssBefore>>20, rssPeak>>20)
	if grew > 128<<20 {
		t.Fatalf("%d connections announcing 1 MiB bodies grew the heap in use by %d MiB", conns, grew>>20)
	}
}
