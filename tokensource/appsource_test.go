package tokensource_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

const (
	testApp       = "tt0000ownapp"
	testAppSecret = "own-app-secret-value-0001"
)

var appKinds = []string{tokensource.ClientToken, tokensource.AppAccessToken}

type appOpt func(*tokensource.AppConfig)

// appSource builds an instance of kind's source for testApp on the harness's
// storage folder (a fresh storage object: nothing shared in memory).
func (h *harness) appSource(kind string, opts ...appOpt) tokensource.AppSource {
	h.t.Helper()
	if err := h.emu.AddApp(testApp, testAppSecret); err != nil {
		h.t.Fatal(err)
	}
	cfg := tokensource.AppConfig{Kind: kind, AppID: testApp, Secret: testAppSecret, Endpoint: h.srv.URL,
		CallTimeout: 5 * time.Second, Store: h.store(), Logger: h.logger, Now: h.clock.Now,
		LockTimeout: 20 * time.Second, RetryBase: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond}
	for _, o := range opts {
		o(&cfg)
	}
	a, err := tokensource.NewAppSource(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = a.Close() })
	return a
}

func forEachAppKind(t *testing.T, f func(t *testing.T, h *harness, kind string)) {
	for _, kind := range appKinds {
		t.Run(kind, func(t *testing.T) { f(t, newHarness(t, tokensource.V2), kind) })
	}
}

func mustAppToken(t *testing.T, a tokensource.AppSource) tokensource.Token {
	t.Helper()
	tok, err := a.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// appAPI calls a v2 API of the emulator with tok and returns the owning app
// and kind (or the error code).
func (h *harness) appAPI(tok tokensource.Token) (owner, kind string, code int) {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, h.srv.URL+"/api/apps/v1/qrcode/create/", nil)
	req.Header.Set("access-token", tok.Value.Reveal())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		ErrNo int `json:"err_no"`
		Data  struct {
			AppID string `json:"appid"`
			Token string `json:"token"`
		} `json:"data"`
	}
	if err := decodeJSON(resp, &body); err != nil {
		h.t.Fatal(err)
	}
	return body.Data.AppID, body.Data.Token, body.ErrNo
}

func (h *harness) appStats(kind string) emulator.AppCounters {
	return h.emu.Stats().AppToken(testApp, kind)
}

// settle waits for the background renewals requests started.
func settle(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for background work")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAppTokenThousandColdRequestsMakeOneFetch(t *testing.T) {
	forEachAppKind(t, func(t *testing.T, h *harness, kind string) {
		a := h.appSource(kind)
		var wg sync.WaitGroup
		toks := make([]tokensource.Token, 1000)
		for i := range toks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var err error
				if toks[i], err = a.Token(context.Background()); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		for _, tok := range toks {
			if tok.Value != toks[0].Value || tok.AppID != testApp || tok.Generation != 1 {
				t.Fatalf("token %+v differs from the first", tok)
			}
		}
		if n := h.appStats(kind).Fetches; n != 1 {
			t.Fatalf("%d fetches for 1,000 cold requests, want 1", n)
		}
		if owner, k, code := h.appAPI(toks[0]); owner != testApp || k != kind || code != 0 {
			t.Fatalf("the platform answered %q %q %d", owner, k, code)
		}
		if _, err := os.Stat(filepath.Join(h.dir, "tptoken", "@apps", testApp, kind+".json")); err != nil {
			t.Fatalf("the token is not stored under tptoken/@apps/<appid>/<kind>.json: %v", err)
		}
		h.assertNoSecretsLogged()
	})
}

// noLockStore is a FileStorage whose lock excludes nothing: what instances
// sharing a storage without a working lock do.
type noLockStore struct{ *certmagic.FileStorage }

func (noLockStore) Lock(context.Context, string) error   { return nil }
func (noLockStore) Unlock(context.Context, string) error { return nil }

// Two instances fetching at once: with the storage lock, the second adopts
// the first one's fetch; with a lock that excludes nothing, both fetch (and
// the platform cuts the first token): the lock is what makes it one fetch.
func TestAppTokenOneFetchAcrossInstancesNeedsTheStorageLock(t *testing.T) {
	for _, tc := range []struct {
		name    string
		store   func(h *harness) tokensource.Store
		fetches int64
	}{
		{"storage lock", func(h *harness) tokensource.Store { return h.store() }, 1},
		{"lock that excludes nothing", func(h *harness) tokensource.Store { return noLockStore{h.store()} }, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tokensource.V2)
			// Fetches take long enough to overlap.
			if err := h.emu.SetFaults(emulator.OpClientToken, emulator.Faults{Latency: 300 * time.Millisecond}); err != nil {
				t.Fatal(err)
			}
			a := h.appSource(tokensource.ClientToken, func(c *tokensource.AppConfig) { c.Store = tc.store(h) })
			b := h.appSource(tokensource.ClientToken, func(c *tokensource.AppConfig) { c.Store = tc.store(h) })
			var wg sync.WaitGroup
			var ta, tb tokensource.Token
			wg.Add(2)
			go func() { defer wg.Done(); ta = mustAppToken(t, a) }()
			go func() { defer wg.Done(); tb = mustAppToken(t, b) }()
			wg.Wait()
			if n := h.appStats(tokensource.ClientToken).Fetches; n != tc.fetches {
				t.Fatalf("%d fetches, want %d", n, tc.fetches)
			}
			if tc.fetches == 1 && ta.Value != tb.Value {
				t.Fatal("the instances send different tokens")
			}
		})
	}
}

// Rotation across two instances with the fake clock: whoever finds the
// token due fetches once; the other adopts it from storage, serving the
// current token meanwhile (no request waits while one may be sent).
func TestAppTokenRotatesOncePerGenerationAndServesWhileRenewing(t *testing.T) {
	forEachAppKind(t, func(t *testing.T, h *harness, kind string) {
		a, b := h.appSource(kind), h.appSource(kind)
		t1 := mustAppToken(t, a)
		if got := mustAppToken(t, b); got.Value != t1.Value {
			t.Fatal("b fetched its own token instead of the stored one")
		}
		for gen := uint64(2); gen <= 4; gen++ {
			h.clock.Advance(2*time.Hour - 9*time.Minute) // past the refresh point (10m ahead)
			cur := mustAppToken(t, b)
			if cur.Generation != gen-1 {
				t.Fatalf("a due token was not served while renewing: generation %d, want %d", cur.Generation, gen-1)
			}
			settle(t, func() bool { return h.appStats(kind).Fetches == int64(gen) })
			settle(t, func() bool { return mustAppToken(t, b).Generation == gen })
			h.clock.Advance(time.Minute) // past the sync interval: a reloads
			settle(t, func() bool { return mustAppToken(t, a).Generation == gen })
		}
		if n := h.appStats(kind).Fetches; n != 4 {
			t.Fatalf("%d fetches for 4 generations", n)
		}
		if st := h.appStats(kind); st.KilledAsThird != 0 {
			t.Fatalf("a fetch killed a token in its grace: %+v", st)
		}
	})
}

// A rejection reported by an instance that missed another's fetch reloads
// and sends the stored token: no fetch (compare-and-invalidate).
func TestAppTokenRejectionAfterAnotherInstanceFetchedCostsNoFetch(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	a, b := h.appSource(tokensource.ClientToken), h.appSource(tokensource.ClientToken)
	t1 := mustAppToken(t, a)
	mustAppToken(t, b)
	if _, err := a.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !b.Invalidate(t1) {
		t.Fatal("b did not drop the token it sent")
	}
	t2 := mustAppToken(t, b)
	if t2.Value == t1.Value || t2.Generation != 2 {
		t.Fatalf("b sends generation %d", t2.Generation)
	}
	if n := h.appStats(tokensource.ClientToken).Fetches; n != 2 {
		t.Fatalf("%d fetches, want 2 (b adopts a's)", n)
	}
	if b.Invalidate(t1) {
		t.Fatal("a stale report dropped the current token")
	}
}

// A token the platform rejected is fetched again once; one so fetched and
// rejected again at once is not fetched again (reject.go's breaker), and the
// log says why such rejections happen.
func TestAppTokenRejectedIsFetchedOnceThenTheBreakerHolds(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	a := h.appSource(tokensource.AppAccessToken)
	t1 := mustAppToken(t, a)
	h.clock.Advance(time.Hour)
	h.emu.RevokeAppToken(testApp, tokensource.AppAccessToken)
	if _, _, code := h.appAPI(t1); code == 0 {
		t.Fatal("the revoked token still works")
	}
	a.Invalidate(t1)
	t2 := mustAppToken(t, a)
	if t2.Value == t1.Value {
		t.Fatal("a rejected token was not replaced")
	}
	if owner, _, code := h.appAPI(t2); owner != testApp || code != 0 {
		t.Fatalf("the new token: %q %d", owner, code)
	}
	if !logged(h, "another system probably fetches this token") {
		t.Error("no log line says why a token is rejected long before it expires")
	}
	// The new token is reported at once: not the token's fault; no fetch.
	a.Invalidate(t2)
	if t3 := mustAppToken(t, a); t3.Value != t2.Value {
		t.Fatal("a token fetched because of a rejection was replaced on the next report")
	}
	if n := h.appStats(tokensource.AppAccessToken).Fetches; n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
}

// A fetch whose answer is lost may have taken effect: the platform then keeps
// the current token only the grace longer, and it is not sent after that
// (less the skew) even though it expires much later.
func TestAppTokenFetchOfUnknownOutcomeCutsTheCurrentToken(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	a := h.appSource(tokensource.ClientToken)
	t1 := mustAppToken(t, a)
	h.clock.Advance(2*time.Hour - 9*time.Minute) // due; 8.5 minutes of use left
	if err := h.emu.SetFaults(emulator.OpClientToken, emulator.Faults{DropResponse: 1000}); err != nil {
		t.Fatal(err)
	}
	if tok := mustAppToken(t, a); tok.Value != t1.Value {
		t.Fatal("the current token was not served while renewing")
	}
	settle(t, func() bool { return a.Info(context.Background()).BackoffUntil.After(h.clock.Now()) })
	h.clock.Advance(4 * time.Minute) // within grace - skew (4m30s) of the lost fetch
	if tok := mustAppToken(t, a); tok.Value != t1.Value {
		t.Fatal("the current token stopped serving before the platform may have cut it")
	}
	h.clock.Advance(time.Minute)
	tok, err := a.Token(context.Background())
	if err == nil {
		t.Fatalf("sent generation %d after the platform may have cut it (a lost fetch 5 minutes ago)", tok.Generation)
	}
	if tokensource.KindOf(err) != tokensource.KindUnavailable {
		t.Fatalf("err = %v", err)
	}
}

// A fetch refused for rate is not retried at once: the current token serves
// until it may no longer be sent, then callers get a Retry-After; attempts
// follow the backoff, not the requests.
func TestAppTokenRateRefusalBacksOffAndServesUntilExpiry(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	a := h.appSource(tokensource.ClientToken)
	t1 := mustAppToken(t, a)
	if err := h.emu.SetFaults(emulator.OpClientToken, emulator.Faults{RateLimited: true}); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(2*time.Hour - 9*time.Minute)
	calls := func() int64 { return h.emu.Stats().Calls[emulator.OpClientToken] }
	for range 50 {
		if tok := mustAppToken(t, a); tok.Value != t1.Value {
			t.Fatal("the current token was not served during the refusal")
		}
	}
	settle(t, func() bool { return calls() == 2 })
	for i := range 8 { // 8 minutes: until 30 s before expiry
		h.clock.Advance(time.Minute)
		if tok := mustAppToken(t, a); tok.Value != t1.Value {
			t.Fatalf("minute %d: the current token was not served", i+1)
		}
		// An attempt due now (if any) has ended once a backoff runs again
		// (requests go on meanwhile: one of them starts the attempt).
		settle(t, func() bool {
			mustAppToken(t, a)
			return a.Info(context.Background()).BackoffUntil.After(h.clock.Now())
		})
	}
	if n := calls(); n > 2+5 {
		t.Fatalf("%d fetch attempts in 8 minutes of refusal: more than the backoff (1m, 2m, 4m, 5m) allows", n-1)
	}
	h.clock.Advance(45 * time.Second) // past expiry - skew
	_, err := a.Token(context.Background())
	var te *tokensource.Error
	if !asError(err, &te) || te.Kind != tokensource.KindUnavailable || te.RetryAfter <= 0 {
		t.Fatalf("after the token's use: err = %v; info %+v; stats %+v", err, a.Info(context.Background()), h.emu.Stats().Calls)
	}
	h.emu.ClearFaults()
	h.clock.Advance(rateBackoffMax) // the longest backoff is over
	if tok := mustAppToken(t, a); tok.Value == t1.Value {
		t.Fatal("did not heal")
	}
}

// rateBackoffMax is the longest backoff after a refusal for rate: 5 minutes + 20% jitter.
const rateBackoffMax = 6*time.Minute + time.Second

func asError(err error, te **tokensource.Error) bool {
	e, ok := err.(*tokensource.Error)
	*te = e
	return ok
}

// A write that fails keeps the new token in memory, marked unsaved, and it is
// written before anything else once storage works.
func TestAppTokenUnsavedTokenIsWrittenOnceStorageWorks(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	fs := &flakyStore{FileStorage: h.store()}
	a := h.appSource(tokensource.ClientToken, func(c *tokensource.AppConfig) { c.Store = fs; c.MaintainInterval = 5 * time.Millisecond })
	fs.failWrites.Store(true)
	t1 := mustAppToken(t, a)
	if !a.Info(context.Background()).Unsaved {
		t.Fatal("a token storage refused is not marked unsaved")
	}
	fs.failWrites.Store(false)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	b := h.appSource(tokensource.ClientToken)
	settle(t, func() bool { return !a.Info(context.Background()).Unsaved })
	cancel()
	<-done
	if got := mustAppToken(t, b); got.Value != t1.Value {
		t.Fatal("another instance does not see the token once written")
	}
	if n := h.appStats(tokensource.ClientToken).Fetches; n != 1 {
		t.Fatalf("%d fetches", n)
	}
}

// Storage lost under a running instance: the token it holds is written
// back, so an instance started afterwards sends the same one instead of
// fetching a new one (which would cut the first instance's token short).
func TestAppTokenLostFromStorageIsWrittenBackFromMemory(t *testing.T) {
	forEachAppKind(t, func(t *testing.T, h *harness, kind string) {
		a := h.appSource(kind, func(c *tokensource.AppConfig) { c.MaintainInterval = 5 * time.Millisecond })
		t1 := mustAppToken(t, a)
		key := filepath.Join(h.dir, "tptoken", "@apps", testApp, kind+".json")
		if _, err := os.Stat(key); err != nil {
			t.Fatalf("the token is not stored where expected: %v", err)
		}
		if err := os.RemoveAll(filepath.Join(h.dir, "tptoken")); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); a.Run(ctx) }()
		settle(t, func() bool { _, err := os.Stat(key); return err == nil })
		cancel()
		<-done
		b := h.appSource(kind)
		if got := mustAppToken(t, b); got.Value != t1.Value {
			t.Fatal("an instance started after the loss does not send the token written back")
		}
		if n := h.appStats(kind).Fetches; n != 1 {
			t.Fatalf("%d fetches, want 1: the loss cost a fetch", n)
		}
		if h.logs.FilterMessageSnippet("was missing from storage: wrote back").Len() != 1 {
			t.Fatal("the write-back is not logged once")
		}
	})
}

func TestAppTokenForcedRefreshIsBudgeted(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	a := h.appSource(tokensource.AppAccessToken)
	mustAppToken(t, a)
	for i := range 3 {
		info, err := a.Refresh(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.Generation != uint64(i+2) {
			t.Fatalf("generation %d after forced fetch %d", info.Generation, i+1)
		}
	}
	_, err := a.Refresh(context.Background())
	if tokensource.KindOf(err) != tokensource.KindRateLimited {
		t.Fatalf("a 4th forced fetch in 10 minutes: %v", err)
	}
	b, _ := json.Marshal(a.Info(context.Background()))
	for _, s := range h.emu.IssuedSecrets() {
		if strings.Contains(string(b), s) {
			t.Fatal("Info shows a token or the secret")
		}
	}
}

// The endpoints' own envelopes and codes: a string expires_in, err_tips,
// a code inside data; a code means what its endpoint says (40020 at the app
// token endpoint is a wrong grant_type, not a rejected token: no retry);
// no error ever holds the secret, even when the platform echoes it.
func TestAppTokenEndpointAnswersAreReadPerEndpoint(t *testing.T) {
	type answer struct {
		status int
		body   string
	}
	cases := []struct {
		name   string
		kind   string
		answer answer
		kind2  tokensource.Kind // 0: success
		text   string
		calls  int32
	}{
		{"app token, expires_in as a string", tokensource.AppAccessToken,
			answer{200, `{"err_no":0,"err_tips":"success","data":{"access_token":"0801abc","expires_in":"7200"}}`}, 0, "", 1},
		{"client token", tokensource.ClientToken,
			answer{200, `{"data":{"access_token":"clt.abc","description":"","error_code":0,"expires_in":7200},"message":"success"}`}, 0, "", 1},
		{"bad secret, err_tips", tokensource.AppAccessToken,
			answer{200, `{"err_no":40017,"err_tips":"bad secret ` + testAppSecret + `","data":{"access_token":"","expires_in":0}}`},
			tokensource.KindPlatform, "40017", 1},
		{"grant_type is a bug, not a token", tokensource.AppAccessToken,
			answer{200, `{"err_no":40020,"err_tips":"grant_type is not client_credential"}`}, tokensource.KindPlatform, "40020", 1},
		{"system error retried", tokensource.AppAccessToken,
			answer{200, `{"err_no":-1,"err_tips":"system error"}`}, tokensource.KindUnavailable, "-1", 3},
		{"client_key wrong, code in data", tokensource.ClientToken,
			answer{200, `{"data":{"error_code":10013,"description":"client_key或client_secret错误"},"extra":{"logid":"L1"},"message":"error"}`},
			tokensource.KindPlatform, "10013", 1},
		{"rate refused", tokensource.ClientToken,
			answer{200, `{"data":{"error_code":10020,"description":"请求太频繁"},"message":"error"}`}, tokensource.KindUnavailable, "10020", 1},
		{"HTTP 429", tokensource.AppAccessToken, answer{429, `too many`}, tokensource.KindUnavailable, "429", 1},
		{"no token in the answer", tokensource.ClientToken,
			answer{200, `{"data":{"error_code":0},"message":"success"}`}, tokensource.KindPlatform, "lacks access_token", 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int32
			var body atomic.Value
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				b := make([]byte, 1024)
				n, _ := r.Body.Read(b)
				body.Store(string(b[:n]))
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.answer.status)
				_, _ = w.Write([]byte(tc.answer.body))
			}))
			defer srv.Close()
			clock := &fakeClock{t: time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)}
			a, err := tokensource.NewAppSource(tokensource.AppConfig{Kind: tc.kind, AppID: testApp, Secret: testAppSecret,
				Endpoint: srv.URL, Store: &certmagic.FileStorage{Path: t.TempDir()}, Now: clock.Now,
				RetryBase: time.Millisecond, RetryMax: time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			tok, err := a.Token(context.Background())
			if n := calls.Load(); n != tc.calls {
				t.Errorf("%d calls, want %d", n, tc.calls)
			}
			if tc.kind2 == 0 {
				if err != nil || tok.Expiry.Sub(clock.Now()) != 2*time.Hour {
					t.Fatalf("token %+v, err %v", tok, err)
				}
				var sent map[string]string
				_ = json.Unmarshal([]byte(body.Load().(string)), &sent)
				if sent["grant_type"] != "client_credential" || sent["appid"]+sent["client_key"] != testApp ||
					sent["secret"]+sent["client_secret"] != testAppSecret {
					t.Fatalf("request body %v", sent)
				}
				return
			}
			if tokensource.KindOf(err) != tc.kind2 || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("err = %v (kind %v), want kind %v mentioning %q", err, tokensource.KindOf(err), tc.kind2, tc.text)
			}
			if strings.Contains(err.Error(), testAppSecret) {
				t.Fatalf("the error holds the secret: %v", err)
			}
		})
	}
}

func TestNewAppSourceRejectsBadConfig(t *testing.T) {
	store := &certmagic.FileStorage{Path: t.TempDir()}
	for _, tc := range []struct {
		cfg  tokensource.AppConfig
		want string
	}{
		{tokensource.AppConfig{Kind: "access_token", AppID: testApp, Secret: "s", Store: store}, "use client_token or app_access_token"},
		{tokensource.AppConfig{Kind: tokensource.ClientToken, AppID: "bad/appid", Secret: "s", Store: store}, "letters, digits"},
		{tokensource.AppConfig{Kind: tokensource.ClientToken, AppID: testApp, Store: store}, "secret is empty"},
		{tokensource.AppConfig{Kind: tokensource.ClientToken, AppID: testApp, Secret: "s", Store: store, Endpoint: "open.douyin.com"}, "absolute http(s) URL"},
		{tokensource.AppConfig{Kind: tokensource.ClientToken, AppID: testApp, Secret: "s"}, "Store is required"},
	} {
		if _, err := tokensource.NewAppSource(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want %q", tc.cfg.Kind, err, tc.want)
		}
	}
}
