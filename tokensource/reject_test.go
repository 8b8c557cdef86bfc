package tokensource_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// rejectionLog records the Observer's Rejection events.
type rejectionLog struct {
	mu     sync.Mutex
	counts map[string]int
}

func (r *rejectionLog) Lookup(string, string) {}

func (r *rejectionLog) PlatformCall(string, string, string, string, time.Duration) {}

func (r *rejectionLog) Recovery(string, string, bool) {}

func (r *rejectionLog) RebuildResult(string, string) {}

func (r *rejectionLog) RebuildDone(string, string) {}

func (r *rejectionLog) Rejection(appid, result string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.counts == nil {
		r.counts = map[string]int{}
	}
	r.counts[appid+" "+result]++
}

// GoneReport is counted as Rejection, with "gone " before the result.
func (r *rejectionLog) GoneReport(appid, result string) { r.Rejection(appid, "gone "+result) }

func (r *rejectionLog) count(appid, result string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[appid+" "+result]
}

// reject is what the transport does with an answer rejecting tok: report it,
// then ask for the token to use.
func reject(t *testing.T, e *tokensource.Engine, tok tokensource.Token) (tokensource.Token, bool) {
	t.Helper()
	dropped := e.Invalidate(tok.AppID, tok)
	next, err := e.Token(context.Background(), tok.AppID)
	if err != nil {
		t.Fatalf("token after a rejection: %v", err)
	}
	return next, dropped
}

// Answers that keep rejecting valid tokens (a client steering an upstream's
// answer) renew a token once; the token obtained, rejected at once, trips the
// breaker: no more renewals for that authorizer until it closes, while the
// valid token keeps serving and other authorizers are untouched.
func TestFalseRejectionsRenewOnceThenTripTheBreaker(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		obs := new(rejectionLog)
		e := h.engine(func(c *tokensource.Config) { c.Observer = obs })
		h.authorize(e, "tt01app")
		h.authorize(e, "tt02app")
		first, _ := e.Token(context.Background(), "tt01app")

		second, dropped := reject(t, e, first)
		if !dropped || second.Value == first.Value {
			t.Fatalf("the first rejection was not acted on (dropped %v)", dropped)
		}
		tok := second
		for i := range 200 {
			next, _ := reject(t, e, tok)
			if next.Value != second.Value {
				t.Fatalf("rejection %d renewed the token again", i+2)
			}
			tok = next
		}
		if n := h.emu.Stats().App("tt01app").Refreshes; n != 1 {
			t.Fatalf("201 false rejections caused %d refreshes, want 1", n)
		}
		if obs.count("tt01app", tokensource.RejectBreakerTripped) != 1 || obs.count("tt01app", tokensource.RejectBreakerOpen) != 199 {
			t.Fatalf("rejection outcomes: %v", obs.counts)
		}
		if owner, code := h.downstream(second); owner != "tt01app" || code != 0 {
			t.Fatalf("the token served during the attack: owner %q, code %d", owner, code)
		}
		if h.logs.FilterMessageSnippet("not about the token").Len() != 1 {
			t.Fatal("the breaker trip was not logged once")
		}
		// Another authorizer's rejection is its own.
		other, _ := e.Token(context.Background(), "tt02app")
		if next, dropped := reject(t, e, other); !dropped || next.Value == other.Value {
			t.Fatal("the breaker of one authorizer held another")
		}

		// Once the breaker closes, one more renewal, and the breaker again.
		h.clock.Advance(10*time.Minute + time.Second)
		third, dropped := reject(t, e, tok)
		if !dropped || third.Value == tok.Value {
			t.Fatal("no renewal after the breaker closed")
		}
		if next, _ := reject(t, e, third); next.Value != third.Value {
			t.Fatal("the token obtained after the breaker closed was renewed at once")
		}
		if n := h.emu.Stats().App("tt01app").Refreshes; n != 2 || obs.count("tt01app", tokensource.RejectBreakerTripped) != 2 {
			t.Fatalf("refreshes %d, trips %d", n, obs.count("tt01app", tokensource.RejectBreakerTripped))
		}
		h.assertNoSecretsLogged()
	})
}

// When the platform refuses to renew, the rejected token keeps serving until
// it really expires (it may well be valid), and it is tried again once per
// interval, not once per answer.
func TestRejectedTokenKeepsServingWhileTheRenewalFails(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		e := h.engine()
		h.authorize(e, "tt01app")
		tok, _ := e.Token(context.Background(), "tt01app")
		if err := h.emu.SetFaults(emulator.OpRefresh, emulator.Faults{Errno40045: 1000}); err != nil {
			t.Fatal(err)
		}
		for i := range 50 {
			next, _ := reject(t, e, tok)
			if next.Value != tok.Value {
				t.Fatalf("rejection %d: another token although every refresh fails", i+1)
			}
		}
		attempts := h.emu.Stats().Calls[emulator.OpRefresh]
		if attempts == 0 || attempts > 3 {
			t.Fatalf("50 rejections within a minute made %d refresh calls, want one renewal (at most 3 attempts)", attempts)
		}
		// Requests keep being served from memory.
		for range 10 {
			if got, err := e.Token(context.Background(), "tt01app"); err != nil || got.Value != tok.Value {
				t.Fatalf("normal request during the refusal: %v", err)
			}
		}
		if n := h.emu.Stats().Calls[emulator.OpRefresh]; n != attempts {
			t.Fatalf("normal requests made %d more refresh calls", n-attempts)
		}

		// A minute later, one more attempt; once the platform renews again,
		// the token is renewed.
		h.clock.Advance(time.Minute + time.Second)
		if next, dropped := reject(t, e, tok); !dropped || next.Value != tok.Value {
			t.Fatalf("a minute later: dropped %v", dropped)
		}
		if n := h.emu.Stats().Calls[emulator.OpRefresh]; n == attempts {
			t.Fatal("no renewal attempt a minute later")
		}
		h.emu.ClearFaults()
		h.clock.Advance(time.Minute + time.Second)
		if next, dropped := reject(t, e, tok); !dropped || next.Value == tok.Value {
			t.Fatal("the token was not renewed once the platform renews again")
		}
		if s := h.emu.Stats().App("tt01app"); s.Refreshes != 1 || s.Refresh40021 != 0 {
			t.Fatalf("stats %+v", s)
		}
	})
}

// A rejection of a token another instance rotated away is settled by a reload:
// no platform call, and no breaker, even right after a renewal of our own.
func TestRejectionSettledByAReloadTripsNothing(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	obs := new(rejectionLog)
	a := h.engine(func(c *tokensource.Config) { c.Observer = obs })
	b := h.engine()
	h.authorize(a, "tt01app")
	t0, _ := a.Token(context.Background(), "tt01app")
	t1, _ := reject(t, a, t0) // a renews because of a rejection
	if t1.Value == t0.Value {
		t.Fatal("no renewal")
	}
	if _, err := b.Refresh(context.Background(), "tt01app"); err != nil { // b rotates t1 away
		t.Fatal(err)
	}
	t2, dropped := reject(t, a, t1)
	if !dropped || t2.Value == t1.Value {
		t.Fatal("a did not pick up b's token")
	}
	if owner, code := h.downstream(t2); owner != "tt01app" || code != 0 {
		t.Fatalf("picked-up token: owner %q code %d", owner, code)
	}
	if n := h.emu.Stats().App("tt01app").Refreshes; n != 2 {
		t.Fatalf("refreshes = %d, want 2 (a's and b's)", n)
	}
	if obs.count("tt01app", tokensource.RejectBreakerTripped) != 0 {
		t.Fatal("a reload tripped the breaker")
	}
}

// The component token follows the same rules.
func TestFalseComponentTokenRejectionsAreBounded(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		e := h.engine()
		tok, err := e.ComponentToken(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		fetches := h.emu.Stats().Total.ComponentTokenFetches
		for range 100 {
			e.InvalidateComponent(tok)
			if tok, err = e.ComponentToken(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		if n := h.emu.Stats().Total.ComponentTokenFetches - fetches; n != 1 {
			t.Fatalf("100 false rejections caused %d component token fetches, want 1", n)
		}
	})
}

func TestInvalidateIsCompareAndInvalidate(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		e := h.engine()
		h.authorize(e, "tt01app")
		cur, _ := e.Token(context.Background(), "tt01app")
		stale := cur
		stale.Value = "some-older-token"
		if e.Invalidate("tt01app", stale) {
			t.Fatal("a token that is no longer current invalidated the current one")
		}
		if tok, _ := e.Token(context.Background(), "tt01app"); tok.Value != cur.Value {
			t.Fatal("the current token changed after invalidating a stale one")
		}
		if h.emu.Stats().App("tt01app").Refreshes != 0 {
			t.Fatal("invalidating a stale token caused a refresh")
		}
		// The platform silently revokes the current token: the downstream call
		// fails, the caller invalidates what it sent, and gets a working token.
		h.emu.RevokeAccessToken("tt01app", h.family)
		if _, code := h.downstream(cur); code == 0 {
			t.Fatal("emulator did not revoke the token")
		}
		if !e.Invalidate("tt01app", cur) {
			t.Fatal("invalidating the current token reported false")
		}
		if e.Invalidate("tt01app", cur) {
			t.Fatal("invalidating twice reported true twice")
		}
		fresh, err := e.Token(context.Background(), "tt01app")
		if err != nil {
			t.Fatal(err)
		}
		if owner, code := h.downstream(fresh); owner != "tt01app" || code != 0 {
			t.Fatalf("fresh token: owner %q code %d", owner, code)
		}
	})
}

// goneReport is what the transport does with an answer saying the
// authorization is gone: report it (no replay), then, at the next request, ask
// for the token to use.
func goneReport(e *tokensource.Engine, tok tokensource.Token) (tokensource.Token, bool, error) {
	acted := e.ReportGone(tok.AppID, tok)
	next, err := e.Token(context.Background(), tok.AppID)
	return next, acted, err
}

// The authorization was revoked and no UNAUTHORIZED push arrived: the first
// answer saying so is verified by one refresh, whose 40004 marks the record
// unauthorized; later calls answer unauthorized without calling the platform,
// and other authorizers are untouched.
func TestReportGoneVerifiedByOneRefreshMarksTheRecordUnauthorized(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		obs := new(rejectionLog)
		e := h.engine(func(c *tokensource.Config) { c.Observer = obs })
		h.authorize(e, "tt01app")
		h.authorize(e, "tt02app")
		tok, _ := e.Token(context.Background(), "tt01app")
		if err := h.emu.Unauthorize("tt01app", false); err != nil {
			t.Fatal(err)
		}
		before := h.emu.Stats().Calls
		_, acted, err := goneReport(e, tok)
		if !acted || tokensource.KindOf(err) != tokensource.KindUnauthorized {
			t.Fatalf("after the report (acted on %v): %v, want unauthorized", acted, err)
		}
		after := h.emu.Stats().Calls
		if n := after[emulator.OpRefresh] - before[emulator.OpRefresh]; n != 1 {
			t.Fatalf("the verification made %d refresh calls, want 1", n)
		}
		if n := after[emulator.OpRetrieve] - before[emulator.OpRetrieve]; n != 0 {
			t.Fatalf("the verification made %d retrieve calls", n)
		}
		for range 50 {
			if e.ReportGone("tt01app", tok) {
				t.Fatal("a report about a token no longer served was acted on")
			}
			if _, err := e.Token(context.Background(), "tt01app"); tokensource.KindOf(err) != tokensource.KindUnauthorized {
				t.Fatalf("later call: %v", err)
			}
			h.clock.Advance(time.Minute) // past the settled answer: a storage read, no platform call
		}
		if !equalCounts(h.emu.Stats().Calls, after) {
			t.Fatalf("platform calls after the confirmation: %v, then %v", after, h.emu.Stats().Calls)
		}
		info, err := e.Info(context.Background(), "tt01app")
		if err != nil || info.State != tokensource.StateUnauthorized {
			t.Fatalf("record: %+v %v", info, err)
		}
		if obs.count("tt01app", "gone "+tokensource.RejectInvalidated) != 1 || obs.count("tt01app", "gone "+tokensource.GoneConfirmed) != 1 {
			t.Fatalf("outcomes: %v", obs.counts)
		}
		if obs.count("tt01app", tokensource.RejectInvalidated) != 0 {
			t.Fatal("a report of a gone authorization was counted as a token rejection")
		}
		if other, err := e.Token(context.Background(), "tt02app"); err != nil {
			t.Fatal(err)
		} else if owner, code := h.downstream(other); owner != "tt02app" || code != 0 {
			t.Fatalf("another authorizer: owner %q code %d", owner, code)
		}
		h.assertNoSecretsLogged()
	})
}

// An answer saying the authorization is gone when it is not (an upstream, or
// a client steering one, may answer anything): one refresh rotates the pair
// and nothing is lost; answers that keep saying so about the token just
// obtained trip the breaker, as rejections do.
func TestFalseGoneReportsRotateOnceThenTripTheBreaker(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		obs := new(rejectionLog)
		e := h.engine(func(c *tokensource.Config) { c.Observer = obs })
		h.authorize(e, "tt01app")
		first, _ := e.Token(context.Background(), "tt01app")
		second, acted, err := goneReport(e, first)
		if err != nil || !acted || second.Value == first.Value {
			t.Fatalf("first report: acted on %v, %v, same token %v", acted, err, second.Value == first.Value)
		}
		if owner, code := h.downstream(second); owner != "tt01app" || code != 0 {
			t.Fatalf("token after the verification: owner %q code %d", owner, code)
		}
		tok := second
		for i := range 200 {
			next, _, err := goneReport(e, tok)
			if err != nil || next.Value != second.Value {
				t.Fatalf("report %d: %v, or the token changed again", i+2, err)
			}
			tok = next
		}
		if s := h.emu.Stats().App("tt01app"); s.Refreshes != 1 || s.Retrieves != 0 {
			t.Fatalf("201 false reports: %+v, want 1 refresh", s)
		}
		if obs.count("tt01app", "gone "+tokensource.GoneAlive) != 1 || obs.count("tt01app", "gone "+tokensource.RejectBreakerTripped) != 1 ||
			obs.count("tt01app", "gone "+tokensource.RejectBreakerOpen) != 199 {
			t.Fatalf("outcomes: %v", obs.counts)
		}
		if !logged(h, "authorization alive after a downstream answer") {
			t.Fatal("the verification's outcome was not logged")
		}
	})
}

// A report about a token that is no longer served does nothing.
func TestReportGoneIsCompareAndReport(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e := h.engine()
	h.authorize(e, "tt01app")
	cur, _ := e.Token(context.Background(), "tt01app")
	stale := cur
	stale.Value = "some-older-token"
	if e.ReportGone("tt01app", stale) || e.ReportGone("tt09unknown", cur) {
		t.Fatal("a report about a token not served was acted on")
	}
	if tok, err := e.Token(context.Background(), "tt01app"); err != nil || tok.Value != cur.Value {
		t.Fatalf("token after stale reports: %v", err)
	}
	if n := h.emu.Stats().Calls[emulator.OpRefresh]; n != 0 {
		t.Fatalf("stale reports made %d refresh calls", n)
	}
}

// With no request after the report, the background loop verifies it.
func TestReportGoneIsVerifiedByTheBackgroundLoopWithoutTraffic(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	e := h.engine()
	ctx := context.Background()
	h.authorize(e, "tt01app")
	tok, _ := e.Token(ctx, "tt01app")
	if err := h.emu.Unauthorize("tt01app", false); err != nil {
		t.Fatal(err)
	}
	if !e.ReportGone("tt01app", tok) {
		t.Fatal("the report was not acted on")
	}
	jobs := e.BackgroundPass(ctx, 0, false)
	if len(jobs) != 1 || jobs[0].AppID != "tt01app" {
		t.Fatalf("jobs = %+v, want the verification of tt01app", jobs)
	}
	jobs[0].Run(ctx)
	if info, err := e.Info(ctx, "tt01app"); err != nil || info.State != tokensource.StateUnauthorized {
		t.Fatalf("after the background pass: %+v %v", info, err)
	}
	if n := h.emu.Stats().Calls[emulator.OpRefresh]; n != 1 {
		t.Fatalf("%d refresh calls, want 1", n)
	}
	if jobs := e.BackgroundPass(ctx, 0, true); len(jobs) != 0 {
		t.Fatalf("jobs after the confirmation: %+v", jobs)
	}
}
