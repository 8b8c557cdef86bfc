package tptoken

import (
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// TestThousandConcurrentRequestsOnAColdAuthorizerRefreshOnceThroughCaddy sends
// 1,000 requests at once, through a real Caddy (in-process), for an authorizer
// whose token has just expired: the platform sees exactly one refresh, every
// request carries the new token, and the latency of the burst stays close to
// that of the same burst once the token is cached (the cold burst waits for
// one refresh, not for a queue of them).
func TestThousandConcurrentRequestsOnAColdAuthorizerRefreshOnceThroughCaddy(t *testing.T) {
	const n = 1000
	const appid = "tt01cold"
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{AccessTokenTTL: 2 * time.Second})
	issued := time.Now()
	x.authorize(appid)
	x.emu.SetLifetimes(emulator.Lifetimes{AccessTokenTTL: 2 * time.Hour}) // the refreshed token lasts
	// Real Caddy, real clock: the first token may not be sent in the last tenth
	// of its 2 s life, and its expiry is what the test waits for.
	time.Sleep(time.Until(issued.Add(2*time.Second + 50*time.Millisecond)))
	if s := x.emu.Stats().App(appid); s.Refreshes != 0 {
		t.Fatalf("refreshed before the stampede: %+v", s)
	}
	// One connection per request: all 1,000 are in Caddy at once.
	x.client = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: n}}

	cold := stampede(t, x, n, appid)
	s := x.emu.Stats().App(appid)
	if s.Refreshes != 1 || s.Refresh40021 != 0 || s.Retrieves != 0 {
		t.Fatalf("platform stats = %+v: want exactly one refresh", s)
	}
	if s.DownstreamOK != n || s.DownstreamInvalid != 0 {
		t.Fatalf("downstream saw %d valid and %d invalid tokens, want %d and 0", s.DownstreamOK, s.DownstreamInvalid, n)
	}
	x.client.CloseIdleConnections() // the warm burst connects anew too
	warm := stampede(t, x, n, appid)
	if r := x.emu.Stats().App(appid).Refreshes; r != 1 {
		t.Fatalf("refreshes = %d after the warm burst", r)
	}
	// Bounded: the cold burst's p99 is the warm burst's plus one refresh, with
	// room for a shared 2-core machine under the race detector.
	if cold.p99 > warm.p99+3*time.Second {
		t.Fatalf("cold burst p99 %v, warm burst p99 %v", cold.p99, warm.p99)
	}
	t.Logf("STAMPEDE requests=%d refreshes=1 cold: took=%v p50=%v p99=%v max=%v; warm (cached token): took=%v p50=%v p99=%v max=%v",
		n, cold.took, cold.p50, cold.p99, cold.max, warm.took, warm.p50, warm.p99, warm.max)
}

type burst struct{ took, p50, p99, max time.Duration }

// stampede sends n requests for appid at once and checks that each got through
// with appid's token.
func stampede(t *testing.T, x *e2e, n int, appid string) burst {
	t.Helper()
	type result struct {
		status int
		owner  string
		err    error
		took   time.Duration
	}
	results := make([]result, n)
	var ready, wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range results {
		ready.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready.Done()
			<-gate
			t0 := time.Now()
			a, err := x.tryCall(http.MethodGet, x.apiPath()+"?i=1", appidHeader(appid), "")
			results[i] = result{a.Status, a.Data.AppID, err, time.Since(t0)}
		}()
	}
	ready.Wait()
	start := time.Now()
	close(gate)
	wg.Wait()
	took := time.Since(start)
	lat := make([]time.Duration, 0, n)
	for i, r := range results {
		if r.err != nil || r.status != http.StatusOK || r.owner != appid {
			t.Fatalf("request %d: status %d, token of %q, error %v", i, r.status, r.owner, r.err)
		}
		lat = append(lat, r.took)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	return burst{ms(took), ms(lat[n/2]), ms(lat[n*99/100]), ms(lat[n-1])}
}
