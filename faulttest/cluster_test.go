//go:build linux

package faulttest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

func appids(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("tt%02dfault", i)
	}
	return ids
}

// Three instances on one storage folder, access tokens living 4 s, 20 s of
// concurrent load over all of them: every rotation happens once cluster-wide, no
// refresh token is burned, and no client sees an error.
func TestThreeInstancesUnderLoadBurnNoRefreshToken(t *testing.T) {
	for _, fam := range []tokensource.Family{tokensource.V1, tokensource.V2} {
		t.Run(string(fam), func(t *testing.T) {
			c := newCluster(t, fam, emulator.Lifetimes{AccessTokenTTL: 4 * time.Second}, "refresh_ahead 1s")
			a, b, d := c.start(nil), c.start(nil), c.start(nil)
			c.pushTo(a) // pushes reach one instance; the others see them through storage
			ids := appids(8)
			c.authorize(ids...)
			const runFor = 20 * time.Second
			l := c.runLoad(24, []*instance{a, b, d}, ids)
			time.Sleep(runFor)
			results := l.finish()

			var total, failed int
			var lat []time.Duration
			var firstFailure string
			for id, rs := range results {
				for _, r := range rs {
					total++
					lat = append(lat, r.latency)
					if !r.ok(id) {
						failed++
						if firstFailure == "" {
							firstFailure = id + ": " + r.String()
						}
					}
				}
			}
			st := c.emu.Stats().Total
			t.Logf("%s: %d requests in %s (%.0f/s) over 3 instances, %d failed; p50 %s p99 %s max %s; "+
				"%d refreshes for %d authorizers (%.1f each), %d refreshes refused with 40021, %d retrieves, "+
				"%d upstream calls with a rotated token (replayed), %d foreign",
				fam, total, runFor, float64(total)/runFor.Seconds(), failed,
				percentile(lat, 0.5), percentile(lat, 0.99), percentile(lat, 1),
				st.Refreshes, len(ids), float64(st.Refreshes)/float64(len(ids)), st.Refresh40021, st.Retrieves,
				st.DownstreamInvalid, st.DownstreamForeign)
			if failed > 0 {
				t.Errorf("%d of %d requests failed; first: %s", failed, total, firstFailure)
			}
			if st.Refresh40021 != 0 || st.Retrieves != 0 {
				t.Errorf("a refresh token was used twice: %d 40021s, %d recoveries", st.Refresh40021, st.Retrieves)
			}
			// One rotation per authorizer every ~3 s at most (4 s tokens, refreshed 1 s ahead).
			if maxRefreshes := int64(len(ids)) * int64(runFor/(2*time.Second)+2); st.Refreshes > maxRefreshes {
				t.Errorf("%d refreshes: more than one instance rotates the same authorizer", st.Refreshes)
			}
			if st.Refreshes < int64(len(ids))*3 {
				t.Errorf("only %d refreshes in %s: tokens did not rotate as configured", st.Refreshes, runFor)
			}
			if st.DownstreamForeign != 0 {
				t.Errorf("%d requests carried another authorizer's or family's token", st.DownstreamForeign)
			}
		})
	}
}

// kill -9 an instance while it holds the lock in the middle of a refresh: the
// others carry on (other authorizers unaffected), the crashed holder's lock
// goes stale within seconds, and the authorizer survives.
func TestKilledInstanceMidRefreshBlocksNobodyForLong(t *testing.T) {
	// Platform calls time out after 2 s and lock waits after 5 s, so no holder
	// keeps a lock more than 5 + 3×2 + 5 = 16 s.
	c := newCluster(t, tokensource.V1, emulator.Lifetimes{AccessTokenTTL: 6 * time.Second},
		"refresh_ahead 2s\n\t\ttimeout 2s\n\t\tlock_timeout 5s")
	a, b := c.start(nil), c.start(nil)
	c.pushTo(b)
	c.authorize("tt01victim", "tt02bystander")
	if r := c.call(a, "tt01victim", ""); !r.ok("tt01victim") {
		t.Fatalf("warm-up: %s", r)
	}
	// Refreshes now take 3 s at the platform; wait for a's token to need one.
	if err := c.emu.SetFaults(emulator.OpRefresh, emulator.Faults{Latency: 3 * time.Second, AppID: "tt01victim"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4500 * time.Millisecond)
	before := c.emu.Stats().Calls[emulator.OpRefresh]
	go c.call(a, "tt01victim", "") // a takes the lock and starts the slow refresh
	eventually(t, 10*time.Second, "a's refresh to reach the platform", func() bool {
		return c.emu.Stats().Calls[emulator.OpRefresh] > before
	})
	c.kill(a)
	c.emu.ClearFaults()
	killedAt := time.Now()

	// The bystander never notices.
	if r := c.call(b, "tt02bystander", ""); !r.ok("tt02bystander") {
		t.Fatalf("another authorizer failed after the kill: %s", r)
	}
	// The victim is served again once the dead holder's lock is stale.
	var r result
	eventually(t, 30*time.Second, "the victim served by the surviving instance", func() bool {
		r = c.call(b, "tt01victim", "")
		return r.ok("tt01victim")
	})
	// FileStorage declares a dead holder's lock stale after 10 s. Here b took
	// the same lock (for the exchange) less than 5 s before a did, so b's
	// certmagic keeps a's lock file fresh: tptoken breaks it once it is older
	// than any holder may hold it.
	broken := strings.Contains(b.logs(), "removed an abandoned storage lock")
	t.Logf("victim served again %s after the kill (abandoned lock broken: %v); last request took %s",
		time.Since(killedAt).Round(100*time.Millisecond), broken, r.latency.Round(time.Millisecond))
	if took := time.Since(killedAt); took > 25*time.Second {
		t.Errorf("the authorizer was blocked %s by a dead holder", took)
	}
	// A restarted instance on the same storage serves it without re-authorization.
	a2 := c.start(nil)
	if r := c.call(a2, "tt01victim", ""); !r.ok("tt01victim") {
		t.Fatalf("restarted instance: %s", r)
	}
	st := c.emu.Stats().App("tt01victim")
	t.Logf("victim: %d refreshes, %d refused with 40021, %d recoveries, %d exchanges", st.Refreshes, st.Refresh40021, st.Retrieves, st.Exchanges)
	if st.Exchanges > 1+st.Retrieves {
		t.Error("the authorizer needed a new authorization")
	}
}

// The platform applies a refresh but its answer is lost: the instance recovers
// with retrieve code + exchange and the client sees no error.
func TestLostRefreshAnswerRecoversThroughCaddy(t *testing.T) {
	c := newCluster(t, tokensource.V2, emulator.Lifetimes{AccessTokenTTL: 4 * time.Second}, "refresh_ahead 1s")
	a := c.start(nil)
	c.pushTo(a)
	c.authorize("tt01lost")
	if r := c.call(a, "tt01lost", ""); !r.ok("tt01lost") {
		t.Fatalf("warm-up: %s", r)
	}
	if err := c.emu.SetFaults(emulator.OpRefresh, emulator.Faults{DropResponse: 1}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // the token needs a refresh now
	if r := c.call(a, "tt01lost", ""); !r.ok("tt01lost") {
		t.Fatalf("after a lost refresh answer: %s", r)
	}
	st := c.emu.Stats().App("tt01lost")
	if st.Retrieves < 1 {
		t.Fatalf("no recovery happened: %+v", st)
	}
	time.Sleep(4 * time.Second) // the recovered chain refreshes normally
	if r := c.call(a, "tt01lost", ""); !r.ok("tt01lost") {
		t.Fatalf("after recovery: %s", r)
	}
	if !strings.Contains(a.logs(), "recovered") {
		t.Error("the recovery was not logged")
	}
}

// The platform's token endpoints go down: the current token keeps serving
// until it truly expires, then requests get 503 with Retry-After (never an
// expired token), and everything heals on its own when the platform is back.
func TestPlatformDownServesUntilExpiryThenHeals(t *testing.T) {
	c := newCluster(t, tokensource.V1, emulator.Lifetimes{AccessTokenTTL: 6 * time.Second}, "refresh_ahead 3s")
	a := c.start(nil)
	c.pushTo(a)
	c.authorize("tt01outage")
	if r := c.call(a, "tt01outage", ""); !r.ok("tt01outage") {
		t.Fatalf("warm-up: %s", r)
	}
	issued := time.Now()
	for _, op := range []string{emulator.OpRefresh, emulator.OpComponentToken, emulator.OpExchange, emulator.OpRetrieve} {
		if err := c.emu.SetFaults(op, emulator.Faults{Down: true}); err != nil {
			t.Fatal(err)
		}
	}
	var servedUntil, firstError time.Time
	var errResult result
	for time.Since(issued) < 9*time.Second {
		r := c.call(a, "tt01outage", "")
		switch {
		case r.ok("tt01outage"):
			if !firstError.IsZero() {
				t.Fatal("served again during the outage after having failed: an expired token was injected?")
			}
			servedUntil = time.Now()
		case firstError.IsZero():
			firstError, errResult = time.Now(), r
		}
		if r.errno == 40020 {
			t.Fatalf("an expired token reached the platform: %s", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if firstError.IsZero() {
		t.Fatal("the token outlived its expiry")
	}
	if servedUntil.Sub(issued) < 4*time.Second {
		t.Fatalf("served only %s of a 6 s token during the outage", servedUntil.Sub(issued))
	}
	if errResult.status != 503 || errResult.kind != "unavailable" {
		t.Fatalf("after expiry: %s, want 503 unavailable", errResult)
	}
	t.Logf("outage: served %s into a 6 s token, then %s", servedUntil.Sub(issued).Round(100*time.Millisecond), errResult)
	c.emu.ClearFaults()
	healedAt := time.Now()
	eventually(t, 45*time.Second, "automatic healing", func() bool { return c.call(a, "tt01outage", "").ok("tt01outage") })
	t.Logf("healed %s after the platform came back", time.Since(healedAt).Round(100*time.Millisecond))
	if st := c.emu.Stats().App("tt01outage"); st.Refresh40021 != 0 {
		t.Fatalf("the outage burned a refresh token: %+v", st)
	}
}

// Authorizers without traffic keep their refresh token alive: the background
// sweep renews it before it expires.
func TestIdleAuthorizerIsRenewedInTheBackground(t *testing.T) {
	c := newCluster(t, tokensource.V1, emulator.Lifetimes{RefreshTokenTTL: 12 * time.Second}, "sweep_interval 1s")
	a, b := c.start(nil), c.start(nil)
	c.pushTo(a)
	c.authorize("tt01idle")
	time.Sleep(30 * time.Second) // 2.5 refresh-token lifetimes without a request
	st := c.emu.Stats().App("tt01idle")
	if st.Refreshes < 3 {
		t.Fatalf("only %d background renewals in 30 s of 12 s refresh tokens", st.Refreshes)
	}
	if r := c.call(b, "tt01idle", ""); !r.ok("tt01idle") {
		t.Fatalf("after 30 idle seconds: %s", r)
	}
	st = c.emu.Stats().App("tt01idle")
	t.Logf("idle authorizer: %d background renewals, %d refused with 40021, %d recoveries", st.Refreshes, st.Refresh40021, st.Retrieves)
	if st.Refresh40021 != 0 || st.Retrieves != 0 || st.Exchanges != 1 {
		t.Fatalf("renewals collided or needed recovery: %+v", st)
	}
}

// UNAUTHORIZED arrives while traffic runs: every instance stops serving the
// authorizer within a request or two, with no refresh loop against the platform.
func TestUnauthorizedMidTrafficStopsCleanly(t *testing.T) {
	c := newCluster(t, tokensource.V1, emulator.Lifetimes{AccessTokenTTL: 4 * time.Second}, "refresh_ahead 1s")
	a, b := c.start(nil), c.start(nil)
	c.pushTo(a)
	c.authorize("tt01gone", "tt02stays")
	l := c.runLoad(8, []*instance{a, b}, []string{"tt01gone", "tt02stays"})
	time.Sleep(3 * time.Second)
	if err := c.emu.Unauthorize("tt01gone", true); err != nil {
		t.Fatal(err)
	}
	revokedAt := time.Now()
	time.Sleep(8 * time.Second)
	results := l.finish()
	refreshesAfter := c.emu.Stats().App("tt01gone")

	for _, r := range results["tt02stays"] {
		if !r.ok("tt02stays") {
			t.Fatalf("the other authorizer failed: %s", r)
		}
	}
	gone := results["tt01gone"]
	tail := gone[len(gone)*3/4:]
	for _, r := range tail {
		if r.status != 403 || r.kind != "unauthorized" {
			t.Fatalf("long after UNAUTHORIZED a request got %s, want 403 unauthorized", r)
		}
	}
	time.Sleep(5 * time.Second)
	later := c.emu.Stats().App("tt01gone")
	if later.Refreshes != refreshesAfter.Refreshes || later.Refresh40021 != refreshesAfter.Refresh40021 || later.Retrieves > refreshesAfter.Retrieves {
		t.Fatalf("platform calls continue for an unauthorized authorizer: %+v -> %+v", refreshesAfter, later)
	}
	t.Logf("unauthorized %s ago; %d requests for it, last quarter all 403", time.Since(revokedAt).Round(time.Second), len(gone))
}
