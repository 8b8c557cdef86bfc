package tokensource_test

import (
	"context"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// generation is what a job renews: the authorizer's record, or the component
// token.
func generation(t *testing.T, e *tokensource.Engine, j tokensource.BackgroundJob) uint64 {
	t.Helper()
	if j.AppID == "" {
		return e.ComponentInfo(context.Background()).TokenGeneration
	}
	info, err := e.Info(context.Background(), j.AppID)
	if err != nil {
		t.Fatal(err)
	}
	return info.Generation
}

// The background loop (maintain, sweep) and the request path (obtain) decide
// with the same predicates (policy.go): driven from one clock, in 5 s steps,
// over several lives of the access token, the refresh token and the component
// token, with the loop's jitter at both ends of its range, every job the loop
// queues renews what it was queued for, and no request ever waits for a
// renewal. It fails if the loop queues work obtain refuses (a lead longer
// than obtain accepts, a predicate obtain does not share).
func TestEveryJobTheBackgroundLoopQueuesIsActedOn(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		h.emu.SetLifetimes(emulator.Lifetimes{AccessTokenTTL: 10 * time.Minute, RefreshTokenTTL: 40 * time.Minute,
			ComponentTokenTTL: 30 * time.Minute})
		e := h.engine(func(c *tokensource.Config) { c.RefreshAhead, c.RefreshTokenMargin = 2*time.Minute, 10*time.Minute })
		ctx := context.Background()
		h.authorize(e, "tt01busy") // traffic: its access token is refreshed ahead
		h.authorize(e, "tt02idle") // none: its refresh token is renewed by the sweep
		mustComponent(t, e)

		queued := map[string]int{}
		for step := range 12 * 60 { // an hour
			h.clock.Advance(5 * time.Second)
			u := []float64{0, 0.999999}[step%2]
			for _, j := range e.BackgroundPass(ctx, u, step%12 == 0) { // a sweep a minute
				before := generation(t, e, j)
				j.Run(ctx)
				if after := generation(t, e, j); after <= before {
					t.Fatalf("at %s (jitter %g) the loop queued %s %q and obtain did not act on it (generation %d)",
						h.clock.Now().Format(time.TimeOnly), u, j.Mode, j.AppID, after)
				}
				queued[j.Mode+" "+j.AppID]++
			}
			if _, err := e.Token(ctx, "tt01busy"); err != nil {
				t.Fatalf("at %s: %v", h.clock.Now().Format(time.TimeOnly), err)
			}
		}
		if queued["ahead tt01busy"] < 5 || queued["ahead "] < 2 || queued["renew tt02idle"] < 1 {
			t.Fatalf("jobs acted on: %v: the test did not exercise every kind of job", queued)
		}
		t.Logf("jobs acted on: %v", queued)
		// Every renewal of tt01busy was a background one: no request waited.
		if s := h.emu.Stats().App("tt01busy"); s.Refreshes != int64(queued["ahead tt01busy"]) || s.Refresh40021 != 0 || s.Retrieves != 0 {
			t.Fatalf("stats = %+v, background renewals %d: a request waited for a renewal", s, queued["ahead tt01busy"])
		}
	})
}

// A record whose write failed is in memory only until a write succeeds: the
// background loop queues it, and obtain writes it, whether or not its token
// is due.
func TestTheBackgroundLoopWritesAnUnsavedRecord(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	fs := &flakyStore{FileStorage: h.store()}
	e := h.engine(func(c *tokensource.Config) { c.Store = fs })
	ctx := context.Background()
	h.authorize(e, "tt01app")
	h.expire()
	fs.failWrites.Store(true)
	tok, err := e.Token(ctx, "tt01app") // refreshed: the rotated pair is in memory only
	if err != nil {
		t.Fatal(err)
	}
	fs.failWrites.Store(false)
	if info, err := e.Info(ctx, "tt01app"); err != nil || !info.Unsaved {
		t.Fatalf("the refresh was stored: %+v %v", info, err)
	}
	h.clock.Advance(time.Minute) // the token is fresh: only the write is due
	jobs := e.BackgroundPass(ctx, 0, false)
	if len(jobs) != 1 || jobs[0].AppID != "tt01app" {
		t.Fatalf("jobs = %+v, want one for tt01app", jobs)
	}
	jobs[0].Run(ctx)
	info, err := h.engine().Info(ctx, "tt01app") // another instance reads storage
	if err != nil || info.Unsaved || info.Generation != tok.Generation {
		t.Fatalf("after the job, storage holds %+v (%v), want generation %d", info, err, tok.Generation)
	}
	if s := h.emu.Stats().App("tt01app"); s.Refreshes != 1 {
		t.Fatalf("the write made %d refreshes, want none", s.Refreshes-1)
	}
}
