package tokensource_test

// Scale and stampede tests. They run in the normal suite at a size that takes
// a few seconds; TPTOKEN_SCALE=1 (make bench-scale) runs them at the sizes of
// BENCHMARKS.md: 10,000 cold authorizers at once, 100,000 records due for
// renewal, 100,000 cached authorizers. Figures are logged (go test -v).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// scaleN is small in the normal suite and large with TPTOKEN_SCALE=1.
func scaleN(small, large int) int {
	if os.Getenv("TPTOKEN_SCALE") != "" {
		return large
	}
	return small
}

// platformTap sits in front of the emulator: it counts platform calls in
// flight (and their peak) and notes when each refresh arrived.
type platformTap struct {
	next      http.Handler
	latency   time.Duration // added to every call, as a distant platform would
	inFlight  atomic.Int64
	peak      atomic.Int64
	mu        sync.Mutex
	refreshes []time.Time
}

func (p *platformTap) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := p.inFlight.Add(1)
	defer p.inFlight.Add(-1)
	for old := p.peak.Load(); n > old && !p.peak.CompareAndSwap(old, n); old = p.peak.Load() {
	}
	if r.URL.Query().Get("grant_type") == "app_to_tp_refresh_token" {
		p.mu.Lock()
		p.refreshes = append(p.refreshes, time.Now())
		p.mu.Unlock()
	}
	if p.latency > 0 {
		time.Sleep(p.latency)
	}
	p.next.ServeHTTP(w, r)
}

func (p *platformTap) refreshTimes() []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.refreshes...)
}

// tappedEngine is an instance on the harness's storage whose platform calls go
// through tap. Its logger discards: at these sizes the harness's in-memory log
// would be what is measured.
func (h *harness) tappedEngine(tap *platformTap, opts ...engineOpt) *tokensource.Engine {
	h.t.Helper()
	tap.next = h.emu
	srv := httptest.NewServer(tap)
	h.t.Cleanup(srv.Close)
	return h.start(tokensource.Config{Endpoint: srv.URL, CallTimeout: 30 * time.Second,
		HTTPClient: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}, Logger: zap.NewNop()}, opts)
}

// diskRecord mirrors the engine's on-disk record (tokensource/record.go), as a
// bulk migration or an earlier run leaves it in storage.
type diskRecord struct {
	V             int                      `json:"v"`
	AppID         string                   `json:"appid"`
	Family        tokensource.Family       `json:"family"`
	State         tokensource.State        `json:"state"`
	AccessToken   string                   `json:"access_token,omitempty"`
	AccessIssued  time.Time                `json:"access_issued"`
	AccessExpiry  time.Time                `json:"access_expiry"`
	RefreshToken  string                   `json:"refresh_token,omitempty"`
	RefreshExpiry time.Time                `json:"refresh_expiry"`
	Permissions   []tokensource.Permission `json:"permissions,omitempty"`
	LastRefresh   time.Time                `json:"last_refresh"`
	AuthorizedAt  time.Time                `json:"authorized_at"`
	UpdatedAt     time.Time                `json:"updated_at"`
	Generation    uint64                   `json:"generation"`
}

// seedPermissions is what the emulator grants every authorizer.
var seedPermissions = []tokensource.Permission{
	{ID: 1, Category: "开发管理权限", Description: "代小程序开发、提审、发布"},
	{ID: 2, Category: "基本信息设置权限", Description: "设置小程序名称、头像、简介"},
	{ID: 3, Category: "运营管理权限", Description: "管理小程序的运营"},
	{ID: 4, Category: "数据分析权限", Description: "查看小程序数据"},
}

// writeRecords writes one record per appid straight into the FileStorage folder
// dir, with 64-character tokens: the access token is valid for accessLeft
// more (negative: expired) and the refresh token for refreshLeft. tokens, when
// set, gives each appid's real token pair (see platformTokens).
func writeRecords(t testing.TB, dir string, family tokensource.Family, now time.Time, ids []string, accessLeft, refreshLeft time.Duration, tokens map[string][2]string) {
	t.Helper()
	st := &certmagic.FileStorage{Path: dir}
	if err := os.MkdirAll(filepath.Dir(st.Filename("tptoken/"+testComponent+"/authorizers/x.json")), 0o700); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		at := fmt.Sprintf("%016x%016x%032d", i, now.UnixNano(), i)
		rt := "r" + at[1:]
		if tk, ok := tokens[id]; ok {
			at, rt = tk[0], tk[1]
		}
		rec := diskRecord{V: 1, AppID: id, Family: family, State: tokensource.StateActive,
			AccessToken: at, AccessIssued: now.Add(accessLeft - 2*time.Hour), AccessExpiry: now.Add(accessLeft),
			RefreshToken: rt, RefreshExpiry: now.Add(refreshLeft), Permissions: seedPermissions,
			LastRefresh: now.Add(accessLeft - 2*time.Hour), AuthorizedAt: now.Add(-24 * time.Hour), UpdatedAt: now, Generation: 1}
		b, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(st.Filename("tptoken/"+testComponent+"/authorizers/"+id+".json"), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// handlerTransport serves HTTP requests with a handler in this goroutine: the
// seeding below exchanges thousands of codes without sockets.
type handlerTransport struct{ h http.Handler }

func (ht handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body == nil {
		r.Body = http.NoBody // as a server sees it
	}
	w := httptest.NewRecorder()
	ht.h.ServeHTTP(w, r)
	return w.Result(), nil
}

// platformTokens authorizes ids on the emulator and exchanges their codes, so
// that each has a token pair the platform knows: a TP that authorized them
// earlier. No engine (and so no lock) is involved.
func (h *harness) platformTokens(ids []string) map[string][2]string {
	h.t.Helper()
	client, err := tokensource.NewClient(tokensource.ClientConfig{
		Family: h.family, Endpoint: "http://emulator.invalid", ComponentAppID: testComponent, ComponentSecret: testSecret,
		HTTPClient: &http.Client{Transport: handlerTransport{h.emu}},
	})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx := context.Background()
	ct, err := client.ComponentToken(ctx, tokensource.Secret(h.emu.Ticket()))
	if err != nil {
		h.t.Fatal(err)
	}
	out := make(map[string][2]string, len(ids))
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	work := make(chan string)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				code, err := h.emu.Authorize(id, false)
				if err == nil {
					var g tokensource.Grant
					if g, err = client.ExchangeCode(ctx, ct.Token, tokensource.Secret(code)); err == nil {
						mu.Lock()
						out[id] = [2]string{g.AccessToken.Reveal(), g.RefreshToken.Reveal()}
						mu.Unlock()
						continue
					}
				}
				select {
				case errs <- fmt.Errorf("seeding %s: %w", id, err):
				default:
				}
			}
		}()
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		h.t.Fatal(err)
	default:
	}
	return out
}

func appIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s%07d", prefix, i)
	}
	return ids
}

// quantile of sorted durations.
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, int(q*float64(len(d))))]
}

func TestColdAuthorizersAtOnceStayUnderTheCallCapAndRefreshOnceEach(t *testing.T) {
	n := scaleN(1000, 10000)
	const maxCalls = 16
	h := newHarness(t, tokensource.V1)
	ids := appIDs("tt", n)
	start := time.Now()
	// Every access token expired a minute ago; the refresh tokens are good.
	writeRecords(t, h.dir, h.family, h.clock.Now(), ids, -time.Minute, 20*24*time.Hour, h.platformTokens(ids))
	t.Logf("seeded %d authorizers in %v", n, time.Since(start).Round(time.Millisecond))

	// With 10 ms per call the platform, not the local work, is the bottleneck:
	// callers pile up at the cap.
	tap := &platformTap{latency: 10 * time.Millisecond}
	e := h.tappedEngine(tap, func(c *tokensource.Config) { c.MaxConcurrentCalls = maxCalls })
	lat := make([]time.Duration, n)
	errs := make([]error, n)
	toks := make([]tokensource.Token, n)
	var ready, wg sync.WaitGroup
	gate := make(chan struct{})
	for i, id := range ids {
		ready.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready.Done()
			<-gate
			t0 := time.Now()
			toks[i], errs[i] = e.Token(context.Background(), id)
			lat[i] = time.Since(t0)
		}()
	}
	ready.Wait()
	start = time.Now()
	close(gate)
	wg.Wait()
	took := time.Since(start)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s: %v", ids[i], err)
		}
		if toks[i].AppID != ids[i] {
			t.Fatalf("%s got the token of %q", ids[i], toks[i].AppID)
		}
	}
	st := h.emu.Stats()
	if st.Total.Refreshes != int64(n) || st.Total.Refresh40021 != 0 || st.Total.Retrieves != 0 {
		t.Fatalf("platform saw %d refreshes, %d refused with 40021, %d retrieves; want exactly %d, 0, 0",
			st.Total.Refreshes, st.Total.Refresh40021, st.Total.Retrieves, n)
	}
	for _, id := range ids {
		if r := st.App(id).Refreshes; r != 1 {
			t.Fatalf("%s refreshed %d times", id, r)
		}
	}
	if peak := tap.peak.Load(); peak > maxCalls {
		t.Fatalf("peak platform calls in flight = %d, above max_concurrent_calls %d", peak, maxCalls)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("SCALE cold_authorizers=%d max_concurrent_calls=%d peak_in_flight=%d refreshes=%d refresh_40021=%d took=%v token_p50=%v token_p99=%v token_max=%v",
		n, maxCalls, tap.peak.Load(), st.Total.Refreshes, st.Total.Refresh40021, took.Round(time.Millisecond),
		quantile(lat, 0.50).Round(time.Millisecond), quantile(lat, 0.99).Round(time.Millisecond), lat[n-1].Round(time.Millisecond))
}

func TestBackgroundRenewalsFollowRenewRateWithNoBurst(t *testing.T) {
	n := scaleN(150, 100000)
	const rate = 50.0 // renewals per second
	observe := 3 * time.Second
	h := newHarness(t, tokensource.V1)
	ids := appIDs("tt", n)
	// Every record became due at the same moment (say, all were imported in
	// bulk 28 days ago and never used since): refresh tokens 2 days from expiry,
	// inside the 72h margin.
	var tokens map[string][2]string
	if n <= 1000 {
		tokens = h.platformTokens(ids) // all renewals succeed
	} else {
		tokens = h.platformTokens(ids[:3000]) // more than the test lasts can renew
	}
	writeRecords(t, h.dir, h.family, h.clock.Now(), ids, -28*24*time.Hour+2*time.Hour, 48*time.Hour, tokens)

	tap := &platformTap{}
	e := h.tappedEngine(tap, func(c *tokensource.Config) {
		c.RenewRate = rate
		c.SweepInterval = 500 * time.Millisecond // the first sweep within 0.5 s of Run
	})
	ctx, cancel := context.WithCancel(context.Background())
	started := time.Now()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); e.Run(ctx) }()
	defer func() { cancel(); wg.Wait() }()

	if n <= 1000 {
		deadline := time.Now().Add(time.Duration(float64(n)/rate*float64(time.Second)) + 20*time.Second)
		for h.emu.Stats().Total.Refreshes < int64(n) {
			if time.Now().After(deadline) {
				t.Fatalf("only %d of %d renewed", h.emu.Stats().Total.Refreshes, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
		observe = time.Since(started)
	} else {
		// A window of a long run (100,000 renewals take 100,000/rate seconds),
		// lasting until the first sweep over every record is done.
		time.Sleep(observe)
		deadline := time.Now().Add(5 * time.Minute)
		for e.ComponentInfo(context.Background()).Sweep == nil {
			if time.Now().After(deadline) {
				t.Fatal("the first sweep did not finish in 5 minutes")
			}
			time.Sleep(50 * time.Millisecond)
		}
		observe = time.Since(started)
	}
	times := tap.refreshTimes()
	cancel()
	wg.Wait()

	// In any window of w, a limiter of `rate` with a burst of 1 lets rate·w + 1
	// through. Between the limiter and the platform a renewal takes a lock and
	// reads its record: allow 100 ms of jitter in arrival times.
	const jitter = 100 * time.Millisecond
	for _, w := range []time.Duration{250 * time.Millisecond, time.Second} {
		limit := int(rate*(w+jitter).Seconds()) + 1
		worst := 0
		for i := range times {
			j := sort.Search(len(times), func(j int) bool { return times[j].Sub(times[i]) >= w })
			worst = max(worst, j-i)
		}
		if worst > limit {
			t.Fatalf("%d renewals within %v, above rate×window+burst = %d", worst, w, limit)
		}
		t.Logf("busiest %v: %d renewals (limit %d)", w, worst, limit)
	}
	firstSecond := sort.Search(len(times), func(j int) bool { return times[j].Sub(started) >= time.Second })
	if firstSecond > int(rate*(time.Second+jitter).Seconds())+1 {
		t.Fatalf("%d renewals in the first second after start-up, above the rate", firstSecond)
	}
	if n <= 1000 {
		st := h.emu.Stats()
		if st.Total.Refreshes != int64(n) || st.Total.Refresh40021 != 0 {
			t.Fatalf("stats = %+v: want each authorizer renewed once", st.Total)
		}
		if min := time.Duration(float64(n-1) / rate * 0.9 * float64(time.Second)); times[len(times)-1].Sub(times[0]) < min {
			t.Fatalf("%d renewals took %v: faster than the rate allows", n, times[len(times)-1].Sub(times[0]))
		}
	}
	var sum tokensource.Summary
	if s := e.ComponentInfo(context.Background()).Sweep; s != nil {
		sum = *s
	}
	t.Logf("SCALE renewal_records=%d renew_rate=%g observed=%v renewals=%d first_second=%d achieved_rate=%.1f/s last_sweep=%dms scheduled_by_last_sweep=%d",
		n, rate, observe.Round(time.Millisecond), len(times), firstSecond,
		float64(len(times))/observe.Seconds(), sum.SweepDurationMillis, sum.RenewalsScheduled)
}

// countingStore counts the storage operations an engine makes.
type countingStore struct {
	inner
	loads, lists atomic.Int64
}

// inner lets countingStore embed a Store whose Store method stays promoted.
type inner = tokensource.Store

func (c *countingStore) Load(ctx context.Context, key string) ([]byte, error) {
	c.loads.Add(1)
	return c.inner.Load(ctx, key)
}

func (c *countingStore) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	c.lists.Add(1)
	return c.inner.List(ctx, path, recursive)
}

func TestStartupReadsNoRecordUntilOneIsAskedFor(t *testing.T) {
	n := scaleN(2000, 100000)
	h := newHarness(t, tokensource.V1)
	ids := appIDs("tt", n)
	writeRecords(t, h.dir, h.family, h.clock.Now(), ids, time.Hour, 20*24*time.Hour, nil)

	store := &countingStore{inner: h.store()}
	t0 := time.Now()
	e, err := tokensource.New(tokensource.Config{ComponentAppID: testComponent, ComponentSecret: testSecret,
		Family: h.family, Endpoint: h.srv.URL, Store: store, Logger: zap.NewNop(), Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	tok, err := e.Token(context.Background(), ids[n/2])
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	if tok.AppID != ids[n/2] {
		t.Fatalf("token of %q", tok.AppID)
	}
	if l, ls := store.loads.Load(), store.lists.Load(); l > 2 || ls != 0 {
		t.Fatalf("with %d records, a start and one request read %d records and listed %d times: records must load lazily", n, l, ls)
	}
	if h.emu.Stats().Total.Refreshes != 0 {
		t.Fatal("a stored, fresh token was refreshed")
	}
	t.Logf("SCALE records=%d new_and_first_token=%v loads=%d lists=%d", n, took.Round(time.Microsecond), store.loads.Load(), store.lists.Load())
}

func TestMemoryPerCachedAuthorizerIsBounded(t *testing.T) {
	n := scaleN(2000, 100000)
	const bound = 4 << 10 // bytes per cached authorizer
	h := newHarness(t, tokensource.V1)
	ids := appIDs("tt", n)
	writeRecords(t, h.dir, h.family, h.clock.Now(), ids, time.Hour, 20*24*time.Hour, nil)
	perAuthorizer, took := cachedAuthorizerMemory(t, h, ids)
	if perAuthorizer > bound {
		t.Fatalf("%.0f bytes of heap per cached authorizer, above %d", perAuthorizer, bound)
	}
	t.Logf("SCALE cached_authorizers=%d heap_per_authorizer=%.0fB total=%.1fMiB load_all=%v",
		n, perAuthorizer, perAuthorizer*float64(n)/(1<<20), took.Round(time.Millisecond))
}

// cachedAuthorizerMemory caches every id in a new engine (one Token call each,
// served from storage) and returns the heap growth per authorizer, measured
// after a GC once the engine holds them all.
func cachedAuthorizerMemory(t testing.TB, h *harness, ids []string) (float64, time.Duration) {
	e, err := tokensource.New(tokensource.Config{ComponentAppID: testComponent, ComponentSecret: testSecret,
		Family: h.family, Endpoint: h.srv.URL, Store: h.store(), Logger: zap.NewNop(), Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	if _, err := e.Token(ctx, ids[0]); err != nil { // warm up lazily built engine state
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	t0 := time.Now()
	for _, id := range ids[1:] {
		if _, err := e.Token(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(t0)
	runtime.GC()
	runtime.ReadMemStats(&after)
	for _, id := range ids[1:] { // still cached: no storage read, no platform call
		if _, err := e.Token(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	runtime.KeepAlive(e)
	return float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(len(ids)-1), took
}
