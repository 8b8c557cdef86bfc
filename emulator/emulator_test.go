package emulator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

const (
	tpAppID  = "tt0123456789abcdef"
	tpSecret = "emulated-app-secret-0001"
	msgToken = "QDG6eK"
	aesKey   = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
	appA     = "tta000000000000001"
	appB     = "ttb000000000000002"
)

var (
	v1 = tokensource.V1
	v2 = tokensource.V2
)

// fakeClock is the emulator's clock in tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// harness is an emulator on a loopback server, driven by a fake clock.
type harness struct {
	t     *testing.T
	e     *Emulator
	srv   *httptest.Server
	clock *fakeClock
	logs  *observer.ObservedLogs
}

func newHarness(t *testing.T, mods ...func(*Config)) *harness {
	t.Helper()
	clock := newClock()
	core, logs := observer.New(zap.DebugLevel)
	cfg := Config{
		ComponentAppID: tpAppID, ComponentAppSecret: tpSecret, MessageToken: msgToken, EncodingAESKey: aesKey,
		Now: clock.Now, Seed: 1, Logger: zap.New(core), PushRetryBackoff: 5 * time.Millisecond,
	}
	for _, m := range mods {
		m(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(e)
	t.Cleanup(func() {
		srv.Close()
		e.Close()
	})
	return &harness{t: t, e: e, srv: srv, clock: clock, logs: logs}
}

// answer is a platform answer normalized across envelopes.
type answer struct {
	status int
	code   int            // errno / err_no; 0 on success
	data   map[string]any // v2 / v1-envelope data, or the bare body
	raw    map[string]any
}

func (h *harness) do(method, path string, q url.Values, hdr http.Header, body []byte) answer {
	h.t.Helper()
	return h.doHost("", method, path, q, hdr, body)
}

func decodeAnswer(t *testing.T, resp *http.Response) answer {
	t.Helper()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&a.raw); err != nil {
		a.raw = map[string]any{"_text": string(b)}
		return a
	}
	a.data = a.raw
	for _, k := range []string{"err_no", "errno"} {
		if n, ok := a.raw[k].(json.Number); ok {
			c, _ := n.Int64()
			a.code = int(c)
			if d, ok := a.raw["data"].(map[string]any); ok {
				a.data = d
			}
		}
	}
	return a
}

func (a answer) str(k string) string { s, _ := a.data[k].(string); return s }
func (a answer) num(k string) int64 {
	n, _ := a.data[k].(json.Number)
	v, _ := n.Int64()
	return v
}

func (h *harness) componentToken(f tokensource.Family) string {
	h.t.Helper()
	a := h.componentTokenCall(f, tpAppID, tpSecret, h.e.Ticket())
	if a.code != 0 || a.str("component_access_token") == "" {
		h.t.Fatalf("component token %s: %+v", f, a.raw)
	}
	return a.str("component_access_token")
}

func (h *harness) componentTokenCall(f tokensource.Family, appid, secret, ticket string) answer {
	q := url.Values{"component_appid": {appid}, "component_appsecret": {secret}, "component_ticket": {ticket}}
	p := PathV1ComponentToken
	if f == v2 {
		p = PathV2ComponentToken
	}
	return h.do("GET", p, q, nil, nil)
}

// tokenCall calls the exchange / refresh endpoint of family f.
func (h *harness) tokenCall(f tokensource.Family, comp, grant, key, value string) answer {
	q := url.Values{"grant_type": {grant}, key: {value}}
	if f == v1 {
		q.Set("component_appid", tpAppID)
		q.Set("component_access_token", comp)
		return h.do("GET", PathV1OAuthToken, q, nil, nil)
	}
	return h.do("GET", PathV2AuthToken, q, http.Header{"Access-Token": {comp}}, nil)
}

func (h *harness) exchange(f tokensource.Family, comp, code string) answer {
	return h.tokenCall(f, comp, GrantCode, "authorization_code", code)
}

func (h *harness) refresh(f tokensource.Family, comp, rt string) answer {
	return h.tokenCall(f, comp, GrantRefresh, "authorizer_refresh_token", rt)
}

// mustExchange authorizes appid and exchanges its code in family f.
func (h *harness) mustExchange(f tokensource.Family, comp, appid string) (access, refresh string) {
	h.t.Helper()
	code, err := h.e.Authorize(appid, false)
	if err != nil {
		h.t.Fatal(err)
	}
	a := h.exchange(f, comp, code)
	if a.code != 0 {
		h.t.Fatalf("exchange %s %s: %+v", f, appid, a.raw)
	}
	return a.str("authorizer_access_token"), a.str("authorizer_refresh_token")
}

// downstream calls the sample API of family f with an authorizer token.
func (h *harness) downstream(f tokensource.Family, tok string) answer {
	if f == v1 {
		return h.do("GET", PathV1Downstream, url.Values{"component_appid": {tpAppID}, "authorizer_access_token": {tok}}, nil, nil)
	}
	return h.do("GET", PathV2Downstream, nil, http.Header{"Access-Token": {tok}}, nil)
}

func invalidCode(f tokensource.Family) int {
	if f == v1 {
		return ErrnoAccessTokenInvalid
	}
	return ErrNoV2AccessTokenInvalid
}

func bothFamilies(t *testing.T, fn func(t *testing.T, f tokensource.Family)) {
	for _, f := range []tokensource.Family{v1, v2} {
		t.Run(string(f), func(t *testing.T) { fn(t, f) })
	}
}

func TestEmulatorExchangeAnswersTheDocumentedFields(t *testing.T) {
	bothFamilies(t, func(t *testing.T, f tokensource.Family) {
		h := newHarness(t)
		comp := h.componentToken(f)
		code, _ := h.e.Authorize(appA, false)
		a := h.exchange(f, comp, code)
		if a.status != 200 || a.code != 0 {
			t.Fatalf("exchange: %+v", a.raw)
		}
		keys := make([]string, 0, len(a.data))
		for k := range a.data {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		want := []string{"authorize_permission", "authorizer_access_token", "authorizer_appid", "authorizer_refresh_token", "expires_in", "refresh_expires_in"}
		if !slices.Equal(keys, want) {
			t.Fatalf("fields %v, want %v", keys, want)
		}
		if a.str("authorizer_appid") != appA || a.num("expires_in") != 7200 || a.num("refresh_expires_in") != 2592000 {
			t.Fatalf("values: %+v", a.data)
		}
		perms, _ := a.data["authorize_permission"].([]any)
		if len(perms) == 0 {
			t.Fatal("no authorize_permission")
		}
		p0 := perms[0].(map[string]any)
		if _, ok := p0["id"]; !ok || p0["category"] == "" || p0["description"] == "" {
			t.Fatalf("permission %v", p0)
		}
		access, refresh := a.str("authorizer_access_token"), a.str("authorizer_refresh_token")
		if f == v2 {
			if !strings.HasPrefix(access, "isvact.") || !strings.HasPrefix(refresh, "isvrft.") || !strings.HasPrefix(comp, "clt.") {
				t.Fatalf("v2 prefixes: %s %s %s", access, refresh, comp)
			}
			if a.raw["log_id"] == "" || a.raw["err_msg"] != "" {
				t.Fatalf("v2 envelope: %+v", a.raw)
			}
		} else if _, err := hex.DecodeString(access); err != nil || len(access) < 40 {
			t.Fatalf("v1 access token is not long hex: %s", access)
		}
		if d := h.downstream(f, access); d.code != 0 || d.str("appid") != appA {
			t.Fatalf("downstream: %+v", d.raw)
		}
		if s := h.e.Stats(); s.App(appA).Exchanges != 1 || s.Total.Exchanges != 1 || s.App(appA).DownstreamOK != 1 {
			t.Fatalf("stats %+v", s)
		}
	})
}

func TestEmulatorCodesAreSingleUseAndExpire(t *testing.T) {
	bothFamilies(t, func(t *testing.T, f tokensource.Family) {
		h := newHarness(t)
		comp := h.componentToken(f)
		code, _ := h.e.Authorize(appA, false)
		if a := h.exchange(f, comp, code); a.code != 0 {
			t.Fatalf("first exchange: %+v", a.raw)
		}
		if a := h.exchange(f, comp, code); a.code != ErrnoCodeExpired {
			t.Fatalf("second exchange: %+v, want 40018", a.raw)
		}
		if a := h.exchange(f, comp, "no-such-code"); a.code != ErrnoCodeExpired {
			t.Fatalf("unknown code: %+v, want 40018", a.raw)
		}
		late, _ := h.e.Authorize(appA, false)
		h.clock.Advance(time.Hour)
		comp = h.componentToken(f)
		if a := h.exchange(f, comp, late); a.code != ErrnoCodeExpired {
			t.Fatalf("expired code: %+v, want 40018", a.raw)
		}
		if a := h.exchange(f, comp, ""); a.code != ErrnoParam {
			t.Fatalf("missing code: %+v, want 40001", a.raw)
		}
	})
}

func TestEmulatorRefreshRotatesAndBurnsTheOldPair(t *testing.T) {
	bothFamilies(t, func(t *testing.T, f tokensource.Family) {
		h := newHarness(t)
		comp := h.componentToken(f)
		access1, refresh1 := h.mustExchange(f, comp, appA)

		a := h.refresh(f, comp, refresh1)
		if a.code != 0 {
			t.Fatalf("refresh: %+v", a.raw)
		}
		access2, refresh2 := a.str("authorizer_access_token"), a.str("authorizer_refresh_token")
		if access2 == access1 || refresh2 == refresh1 || a.str("authorizer_appid") != appA {
			t.Fatalf("refresh did not rotate: %+v", a.data)
		}
		if d := h.downstream(f, access1); d.code != invalidCode(f) {
			t.Fatalf("old access token after refresh: %+v", d.raw)
		}
		if d := h.downstream(f, access2); d.code != 0 {
			t.Fatalf("new access token: %+v", d.raw)
		}
		if a := h.refresh(f, comp, refresh1); a.code != ErrnoRefreshTokenInvalid {
			t.Fatalf("reused refresh token: %+v, want 40021", a.raw)
		}
		if a := h.refresh(f, comp, "unknown-refresh-token"); a.code != ErrnoRefreshTokenInvalid {
			t.Fatalf("unknown refresh token: %+v, want 40021", a.raw)
		}
		s := h.e.Stats()
		if s.App(appA).Refresh40021 != 1 || s.Total.Refresh40021 != 2 || s.App(appA).Refreshes != 1 || s.App(appA).DownstreamInvalid != 1 {
			t.Fatalf("stats %+v", s)
		}
		// The new pair still works after the failed reuse.
		if a := h.refresh(f, comp, refresh2); a.code != 0 {
			t.Fatalf("refresh with the new token: %+v", a.raw)
		}
	})
}

func TestEmulatorRefreshTokenExpires(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.RefreshTokenTTL = 48 * time.Hour })
	comp := h.componentToken(v1)
	_, rt := h.mustExchange(v1, comp, appA)
	h.clock.Advance(48 * time.Hour)
	comp = h.componentToken(v1)
	if a := h.refresh(v1, comp, rt); a.code != ErrnoRefreshTokenInvalid {
		t.Fatalf("expired refresh token: %+v, want 40021", a.raw)
	}
}

func TestEmulatorConcurrentRefreshesOfOneTokenLetExactlyOneWin(t *testing.T) {
	h := newHarness(t)
	comp := h.componentToken(v2)
	_, rt := h.mustExchange(v2, comp, appA)
	var wins, burned atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch a := h.refresh(v2, comp, rt); a.code {
			case 0:
				wins.Add(1)
			case ErrnoRefreshTokenInvalid:
				burned.Add(1)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 || burned.Load() != 15 || h.e.Stats().App(appA).Refresh40021 != 15 {
		t.Fatalf("wins %d, 40021 %d", wins.Load(), burned.Load())
	}
}

func TestEmulatorNewExchangeKillsOnlyThatFamilysChain(t *testing.T) {
	h := newHarness(t)
	c1, c2 := h.componentToken(v1), h.componentToken(v2)
	a1, r1 := h.mustExchange(v1, c1, appA)
	a2, r2 := h.mustExchange(v2, c2, appA)
	// Both chains are independent.
	if d := h.downstream(v1, a1); d.code != 0 {
		t.Fatalf("v1 chain: %+v", d.raw)
	}
	if d := h.downstream(v2, a2); d.code != 0 {
		t.Fatalf("v2 chain: %+v", d.raw)
	}
	// A new v1 exchange kills the v1 chain only.
	h.mustExchange(v1, c1, appA)
	if d := h.downstream(v1, a1); d.code != ErrnoAccessTokenInvalid {
		t.Fatalf("old v1 access after re-exchange: %+v", d.raw)
	}
	if a := h.refresh(v1, c1, r1); a.code != ErrnoRefreshTokenInvalid {
		t.Fatalf("old v1 refresh after re-exchange: %+v", a.raw)
	}
	if d := h.downstream(v2, a2); d.code != 0 {
		t.Fatalf("v2 chain after v1 re-exchange: %+v", d.raw)
	}
	if a := h.refresh(v2, c2, r2); a.code != 0 {
		t.Fatalf("v2 refresh after v1 re-exchange: %+v", a.raw)
	}
	// Another authorizer is untouched by all this.
	b1, _ := h.mustExchange(v1, c1, appB)
	if d := h.downstream(v1, b1); d.code != 0 || d.str("appid") != appB {
		t.Fatalf("appB: %+v", d.raw)
	}
}

func TestEmulatorV1ComponentTokenIsReusedUntilTheReissueWindow(t *testing.T) {
	h := newHarness(t)
	t1 := h.componentToken(v1)
	h.clock.Advance(89 * time.Minute) // 31 min left
	a := h.componentTokenCall(v1, tpAppID, tpSecret, h.e.Ticket())
	if a.str("component_access_token") != t1 || a.num("expires_in") != 31*60 {
		t.Fatalf("within the window: %+v, want the same token with 1860 s left", a.data)
	}
	h.clock.Advance(2 * time.Minute) // 29 min left: a new token, the old one stays valid
	t2 := h.componentToken(v1)
	if t2 == t1 {
		t.Fatal("no new token once less than 30 min remained")
	}
	_, _ = h.e.Authorize(appA, false)
	for _, tok := range []string{t1, t2} {
		if a := h.do("POST", PathV1Retrieve, url.Values{"component_appid": {tpAppID}, "component_access_token": {tok}, "authorization_appid": {appA}}, nil, nil); a.code != 0 {
			t.Fatalf("token still valid: %+v", a.raw)
		}
	}
	if t3 := h.componentToken(v1); t3 != t2 {
		t.Fatal("the new token is not reused")
	}
	h.clock.Advance(29 * time.Minute) // t1 expired
	if a := h.do("POST", PathV1Retrieve, url.Values{"component_appid": {tpAppID}, "component_access_token": {t1}, "authorization_appid": {appA}}, nil, nil); a.code != ErrnoComponentExpired {
		t.Fatalf("expired v1 component token: %+v, want 40009", a.raw)
	}
	if s := h.e.Stats(); s.Total.ComponentTokenFetches != 4 || s.Total.ComponentTokensIssued != 2 {
		t.Fatalf("stats %+v", s.Total)
	}
}

func TestEmulatorV2ComponentTokenFetchSupersedesWithGraceAndKeepsTwo(t *testing.T) {
	h := newHarness(t)
	_, _ = h.e.Authorize(appA, false)
	retrieve := func(tok string) int {
		return h.do("POST", PathV2Retrieve, nil, http.Header{"Access-Token": {tok}}, []byte(`{"authorization_appid":"`+appA+`"}`)).code
	}
	t1 := h.componentToken(v2)
	t2 := h.componentToken(v2)
	if t1 == t2 {
		t.Fatal("v2 fetch returned the same token")
	}
	if c := retrieve(t1); c != 0 {
		t.Fatalf("superseded token within the grace: %d", c)
	}
	h.clock.Advance(5 * time.Minute)
	if c := retrieve(t1); c != ErrnoComponentExpired {
		t.Fatalf("superseded token after the grace: %d, want 40009", c)
	}
	if c := retrieve(t2); c != 0 {
		t.Fatalf("latest token: %d", c)
	}
	t3 := h.componentToken(v2)
	if c := retrieve(t2); c != 0 {
		t.Fatalf("previous token within the grace: %d", c)
	}
	h.componentToken(v2) // t4: only the latest two are kept, t2 dies at once
	if c := retrieve(t2); c != ErrnoComponentInvalid {
		t.Fatalf("token two fetches back: %d, want 40010", c)
	}
	if c := retrieve(t3); c != 0 {
		t.Fatalf("previous token: %d", c)
	}
}

func TestEmulatorComponentTokenRejectsBadCredentials(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.TicketTTL = time.Hour })
	ticket := h.e.Ticket()
	tests := []struct {
		name                  string
		appid, secret, ticket string
		want                  int
	}{
		{"missing ticket", tpAppID, tpSecret, "", ErrnoParam},
		{"missing secret", tpAppID, "", ticket, ErrnoParam},
		{"unknown component appid", "tt9999999999999999", tpSecret, ticket, ErrnoUnknownComponent},
		{"wrong secret", tpAppID, "wrong", ticket, ErrnoBadSecret},
		{"ticket never pushed", tpAppID, tpSecret, "0123456789abcdef0123456789abcdef", ErrnoBadTicket},
	}
	for _, f := range []tokensource.Family{v1, v2} {
		for _, tt := range tests {
			t.Run(string(f)+"/"+tt.name, func(t *testing.T) {
				a := h.componentTokenCall(f, tt.appid, tt.secret, tt.ticket)
				if a.code != tt.want || a.raw["errno"] == nil {
					t.Fatalf("%+v, want errno %d", a.raw, tt.want)
				}
			})
		}
	}
	h.clock.Advance(time.Hour)
	if a := h.componentTokenCall(v1, tpAppID, tpSecret, ticket); a.code != ErrnoBadTicket {
		t.Fatalf("ticket older than TicketTTL: %+v", a.raw)
	}
	if fresh := h.e.Ticket(); fresh == ticket {
		t.Fatal("Ticket returned an expired ticket")
	}
}

func TestEmulatorTokenFamiliesNeverMix(t *testing.T) {
	h := newHarness(t)
	c1, c2 := h.componentToken(v1), h.componentToken(v2)
	a1, r1 := h.mustExchange(v1, c1, appA)
	a2, r2 := h.mustExchange(v2, c2, appA)
	foreign := []struct {
		name string
		f    tokensource.Family
		tok  string
		want int
	}{
		{"v1 access token on v2", v2, a1, ErrNoV2AccessTokenInvalid},
		{"v2 access token on v1", v1, a2, ErrnoAccessTokenInvalid},
		{"component token as authorizer token (v1)", v1, c1, ErrnoAccessTokenInvalid},
		{"component token as authorizer token (v2)", v2, c2, ErrNoV2AccessTokenInvalid},
		{"refresh token as access token", v2, r2, ErrNoV2AccessTokenInvalid},
	}
	for _, tt := range foreign {
		if d := h.downstream(tt.f, tt.tok); d.code != tt.want {
			t.Fatalf("%s: %+v, want %d", tt.name, d.raw, tt.want)
		}
	}
	if s := h.e.Stats(); s.Total.DownstreamForeign != int64(len(foreign)) || s.App(appA).DownstreamForeign != 3 || s.Total.DownstreamOK != 0 {
		t.Fatalf("foreign not counted: %+v", s)
	}
	if a := h.exchange(v2, c1, "x"); a.code != ErrnoComponentInvalid {
		t.Fatalf("v1 component token on v2: %+v, want 40010", a.raw)
	}
	if a := h.refresh(v1, c2, r1); a.code != ErrnoComponentInvalid {
		t.Fatalf("v2 component token on v1: %+v, want 40010", a.raw)
	}
	if a := h.refresh(v1, a1, r1); a.code != ErrnoComponentInvalid {
		t.Fatalf("authorizer token as component token: %+v, want 40010", a.raw)
	}
	if a := h.refresh(v1, c1, r2); a.code != ErrnoRefreshTokenInvalid {
		t.Fatalf("v2 refresh token on v1: %+v, want 40021", a.raw)
	}
	// None of that hurt the real chains.
	if a := h.refresh(v1, c1, r1); a.code != 0 {
		t.Fatalf("v1 refresh: %+v", a.raw)
	}
	if a := h.refresh(v2, c2, r2); a.code != 0 {
		t.Fatalf("v2 refresh: %+v", a.raw)
	}
}

func TestEmulatorAuthorizerCallErrors(t *testing.T) {
	h := newHarness(t)
	c1 := h.componentToken(v1)
	tests := []struct {
		name string
		q    url.Values
		want int
	}{
		{"bad grant_type", url.Values{"component_appid": {tpAppID}, "component_access_token": {c1}, "grant_type": {"password"}}, ErrnoBadGrant},
		{"no grant_type", url.Values{"component_appid": {tpAppID}, "component_access_token": {c1}}, ErrnoBadGrant},
		{"no component token", url.Values{"component_appid": {tpAppID}, "grant_type": {GrantCode}}, ErrnoParam},
		{"no component appid", url.Values{"component_access_token": {c1}, "grant_type": {GrantCode}}, ErrnoParam},
		{"other component appid", url.Values{"component_appid": {"tt1"}, "component_access_token": {c1}, "grant_type": {GrantCode}}, ErrnoUnknownComponent},
		{"unknown component token", url.Values{"component_appid": {tpAppID}, "component_access_token": {"nope"}, "grant_type": {GrantCode}}, ErrnoComponentInvalid},
	}
	for _, tt := range tests {
		if a := h.do("GET", PathV1OAuthToken, tt.q, nil, nil); a.code != tt.want {
			t.Errorf("%s: %+v, want %d", tt.name, a.raw, tt.want)
		}
	}
	h.clock.Advance(2 * time.Hour)
	if a := h.exchange(v1, c1, "x"); a.code != ErrnoComponentExpired {
		t.Fatalf("expired component token: %+v, want 40009", a.raw)
	}
}

func TestEmulatorRetrieveGivesACodeThatExchanges(t *testing.T) {
	bothFamilies(t, func(t *testing.T, f tokensource.Family) {
		rcv := newReceiver(t)
		h := newHarness(t, func(c *Config) { c.PushURL = rcv.srv.URL })
		comp := h.componentToken(f)
		a1, r1 := h.mustExchange(f, comp, appA)
		retrieve := func(appid string) answer {
			if f == v1 {
				return h.do("POST", PathV1Retrieve, url.Values{"component_appid": {tpAppID}, "component_access_token": {comp}, "authorization_appid": {appid}}, nil, nil)
			}
			return h.do("POST", PathV2Retrieve, nil, http.Header{"Access-Token": {comp}, "Content-Type": {"application/json"}}, []byte(`{"authorization_appid":"`+appid+`"}`))
		}
		a := retrieve(appA)
		code := a.str("authorization_code")
		if a.code != 0 || code == "" || a.num("expires_in") != 3600 {
			t.Fatalf("retrieve: %+v", a.raw)
		}
		// The UPDATE_AUTHORIZED push carries the same code.
		m := rcv.next(t)
		if m.Kind != push.UpdateAuthorized || m.AppID != appA || m.AuthorizationCode.Reveal() != code || m.CodeExpiresIn != 3600 || m.TpAppID != tpAppID {
			t.Fatalf("push %+v", m)
		}
		// The chain is intact until the code is exchanged; then it is replaced.
		if d := h.downstream(f, a1); d.code != 0 {
			t.Fatalf("chain after retrieve: %+v", d.raw)
		}
		if e := h.exchange(f, comp, code); e.code != 0 {
			t.Fatalf("exchange of the retrieved code: %+v", e.raw)
		}
		if r := h.refresh(f, comp, r1); r.code != ErrnoRefreshTokenInvalid {
			t.Fatalf("old refresh after re-exchange: %+v", r.raw)
		}
		if a := retrieve("tt7777777777777777"); a.code != ErrnoUnknownAuthorizer {
			t.Fatalf("never authorized: %+v, want 40004", a.raw)
		}
		if a := retrieve(""); a.code != ErrnoParam {
			t.Fatalf("no appid: %+v, want 40001", a.raw)
		}
		if err := h.e.Unauthorize(appA, false); err != nil {
			t.Fatal(err)
		}
		if a := retrieve(appA); a.code != ErrnoNotAuthorized {
			t.Fatalf("after unauthorize: %+v, want 40022", a.raw)
		}
		// The receiver got the push before the emulator read its "success".
		waitFor(t, func() bool { return h.e.Stats().App(appA).PushesSent == 1 })
		if s := h.e.Stats(); s.App(appA).Retrieves != 1 || s.App(appA).PushesSent != 1 {
			t.Fatalf("stats %+v", s.App(appA))
		}
	})
}

func TestEmulatorUnauthorizeKillsEverything(t *testing.T) {
	h := newHarness(t)
	c1, c2 := h.componentToken(v1), h.componentToken(v2)
	a1, r1 := h.mustExchange(v1, c1, appA)
	a2, r2 := h.mustExchange(v2, c2, appA)
	pending, _ := h.e.Authorize(appA, false)
	if err := h.e.Unauthorize(appA, false); err != nil {
		t.Fatal(err)
	}
	if d := h.downstream(v1, a1); d.code != ErrnoAccessTokenInvalid {
		t.Fatalf("v1 access: %+v", d.raw)
	}
	if d := h.downstream(v2, a2); d.code != ErrNoV2AccessTokenInvalid {
		t.Fatalf("v2 access: %+v", d.raw)
	}
	if a := h.refresh(v1, c1, r1); a.code != ErrnoUnknownAuthorizer {
		t.Fatalf("v1 refresh: %+v, want 40004", a.raw)
	}
	if a := h.refresh(v2, c2, r2); a.code != ErrnoUnknownAuthorizer {
		t.Fatalf("v2 refresh: %+v, want 40004", a.raw)
	}
	if a := h.exchange(v1, c1, pending); a.code != ErrnoCodeExpired {
		t.Fatalf("pending code: %+v, want 40018", a.raw)
	}
	if err := h.e.Unauthorize("tt0000000000000009", false); !errors.Is(err, ErrUnknownAuthorizer) {
		t.Fatalf("unknown appid: %v", err)
	}
	// Authorizing again starts afresh; the old refresh token stays dead.
	a3, _ := h.mustExchange(v1, c1, appA)
	if d := h.downstream(v1, a3); d.code != 0 {
		t.Fatalf("after re-authorization: %+v", d.raw)
	}
	if a := h.refresh(v1, c1, r1); a.code != ErrnoRefreshTokenInvalid {
		t.Fatalf("old refresh after re-authorization: %+v, want 40021", a.raw)
	}
}

// With UnauthorizedDownstream set, a revoked authorization's token gets that
// code from downstream APIs, in the family's field; a token that died for
// another reason (rotated away) still gets the invalid-token code.
func TestEmulatorAnswersUnauthorizedDownstreamForARevokedAuthorization(t *testing.T) {
	bothFamilies(t, func(t *testing.T, f tokensource.Family) {
		h := newHarness(t)
		h.e.SetUnauthorizedDownstream(ErrnoNotAuthorized)
		comp := h.componentToken(f)
		old, r := h.mustExchange(f, comp, appA)
		if a := h.refresh(f, comp, r); a.code != 0 {
			t.Fatalf("refresh: %+v", a.raw)
		}
		cur, _ := h.mustExchange(f, comp, appA)
		if err := h.e.Unauthorize(appA, false); err != nil {
			t.Fatal(err)
		}
		d := h.downstream(f, cur)
		field := "errno"
		if f == v2 {
			field = "err_no"
		}
		if d.code != ErrnoNotAuthorized || d.raw[field] != json.Number("40022") {
			t.Fatalf("revoked authorization's token: %v, want %s 40022", d.raw, field)
		}
		if d := h.downstream(f, old); d.code != invalidCode(f) {
			t.Fatalf("token rotated away before the revocation: %+v, want %d", d.raw, invalidCode(f))
		}
		if n := h.e.Stats().App(appA).DownstreamGone; n != 1 {
			t.Fatalf("DownstreamGone = %d, want 1", n)
		}
		h.e.SetUnauthorizedDownstream(0)
		if d := h.downstream(f, cur); d.code != invalidCode(f) {
			t.Fatalf("switch off: %+v, want %d", d.raw, invalidCode(f))
		}
	})
}

func TestEmulatorRevokeAndExpireAccessTokenKeepTheRefreshToken(t *testing.T) {
	h := newHarness(t)
	c2 := h.componentToken(v2)
	a2, r2 := h.mustExchange(v2, c2, appA)
	if !h.e.ExpireAccessToken(appA, v2) {
		t.Fatal("no chain to expire")
	}
	if d := h.downstream(v2, a2); d.code != ErrNoV2AccessTokenExpired {
		t.Fatalf("expired v2 token: %+v, want 28001008", d.raw)
	}
	a := h.refresh(v2, c2, r2)
	if a.code != 0 {
		t.Fatalf("refresh after expiry: %+v", a.raw)
	}
	if !h.e.RevokeAccessToken(appA, v2) {
		t.Fatal("no chain to revoke")
	}
	if d := h.downstream(v2, a.str("authorizer_access_token")); d.code != ErrNoV2AccessTokenInvalid {
		t.Fatalf("revoked v2 token: %+v, want 28001003", d.raw)
	}
	if r := h.refresh(v2, c2, a.str("authorizer_refresh_token")); r.code != 0 {
		t.Fatalf("refresh after revoke: %+v", r.raw)
	}
	if h.e.RevokeAccessToken(appB, v1) {
		t.Fatal("revoked a chain that does not exist")
	}
	// A natural expiry gives 40020 on v1.
	c1 := h.componentToken(v1)
	a1, _ := h.mustExchange(v1, c1, appB)
	h.clock.Advance(2 * time.Hour)
	if d := h.downstream(v1, a1); d.code != ErrnoAccessTokenInvalid {
		t.Fatalf("expired v1 token: %+v", d.raw)
	}
}

func TestEmulatorAppListPages(t *testing.T) {
	h := newHarness(t)
	for _, id := range []string{appA, appB, "ttc000000000000003"} {
		h.e.Authorize(id, false)
		h.clock.Advance(time.Second)
	}
	h.e.Unauthorize(appB, false)
	c1, c2 := h.componentToken(v1), h.componentToken(v2)

	a := h.do("GET", PathV1AppList, url.Values{"component_appid": {tpAppID}, "component_access_token": {c1}, "page": {"1"}, "size": {"1"}}, nil, nil)
	if a.code != 0 || a.raw["message"] != "success" || a.num("total") != 2 {
		t.Fatalf("v1 list: %+v", a.raw)
	}
	l := a.data["authAppList"].([]any)
	if len(l) != 1 || l[0].(map[string]any)["authAppId"] != appA || l[0].(map[string]any)["authTime"] == nil {
		t.Fatalf("v1 page 1: %+v", l)
	}
	a = h.do("GET", PathV2AppList, url.Values{"page": {"2"}, "size": {"1"}}, http.Header{"Access-Token": {c2}}, nil)
	l = a.data["auth_app_list"].([]any)
	if a.code != 0 || a.num("total") != 2 || len(l) != 1 || l[0].(map[string]any)["auth_appid"] != "ttc000000000000003" {
		t.Fatalf("v2 page 2: %+v", a.raw)
	}
	a = h.do("GET", PathV2AppList, url.Values{"page": {"3"}, "size": {"50"}}, http.Header{"Access-Token": {c2}}, nil)
	if l := a.data["auth_app_list"].([]any); a.code != 0 || len(l) != 0 {
		t.Fatalf("v2 past the end: %+v", a.raw)
	}
	for _, q := range []url.Values{{"page": {"1"}, "size": {"51"}}, {"page": {"0"}, "size": {"5"}}, {"size": {"5"}}} {
		if a := h.do("GET", PathV2AppList, q, http.Header{"Access-Token": {c2}}, nil); a.code != ErrnoParam {
			t.Fatalf("bad paging %v: %+v", q, a.raw)
		}
	}
}

func TestEmulatorDownstreamReportsWhatItReceived(t *testing.T) {
	h := newHarness(t)
	c1, c2 := h.componentToken(v1), h.componentToken(v2)
	a1, _ := h.mustExchange(v1, c1, appA)
	a2, _ := h.mustExchange(v2, c2, appA)
	body := []byte(`{"version":"1.0.0","path":"pages/index"}`)
	sum := sha256.Sum256(body)

	raw := "z=1&authorizer_access_token=" + a1 + "&component_appid=" + tpAppID + "&a=x%20y"
	req, _ := http.NewRequest("POST", h.srv.URL+"/openapi/v1/microapp/app/qrcode?"+raw, bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	a := decodeAnswer(t, resp)
	resp.Body.Close()
	wantQuery := "z=1&authorizer_access_token=***&component_appid=" + tpAppID + "&a=x%20y"
	if a.code != 0 || a.raw["message"] != "success" || a.str("query") != wantQuery || a.str("appid") != appA || a.str("family") != "v1" ||
		a.str("method") != "POST" || a.str("path") != "/openapi/v1/microapp/app/qrcode" || a.num("body_len") != int64(len(body)) ||
		a.str("body_sha256") != hex.EncodeToString(sum[:]) || a.num("access_token_params") != 1 || a.num("access_token_headers") != 0 {
		t.Fatalf("v1 downstream: %+v", a.raw)
	}

	a = h.do("GET", PathV2Downstream, url.Values{"x": {"1"}}, http.Header{"Access-Token": {a2, "stale"}}, nil)
	if a.code != 0 || a.str("family") != "v2" || a.num("access_token_headers") != 2 || a.str("query") != "x=1" || a.num("body_len") != 0 {
		t.Fatalf("v2 downstream: %+v", a.raw)
	}
	if strings.Contains(a.str("query"), a2) {
		t.Fatal("token echoed")
	}
	// Missing tokens.
	if a := h.do("GET", PathV2Downstream, nil, nil, nil); a.code != ErrNoV2AccessTokenInvalid {
		t.Fatalf("no header: %+v", a.raw)
	}
	if a := h.do("GET", PathV1Downstream, url.Values{"component_appid": {tpAppID}}, nil, nil); a.code != ErrnoMissing {
		t.Fatalf("no token param: %+v", a.raw)
	}
	if a := h.do("GET", PathV1Downstream, url.Values{"authorizer_access_token": {a1}}, nil, nil); a.code != ErrnoMissing {
		t.Fatalf("no component_appid: %+v", a.raw)
	}
}

func TestEmulatorMaskQueryKeepsOrderAndEscaping(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"a=1&b=2", "a=1&b=2"},
		{"authorizer_access_token=abc&x=%2F", "authorizer_access_token=***&x=%2F"},
		{"x=1&authorizer%5Faccess%5Ftoken=abc&authorizer_access_token=d", "x=1&authorizer%5Faccess%5Ftoken=***&authorizer_access_token=***"},
		{"component_access_token=s&flag&component_appsecret=", "component_access_token=***&flag&component_appsecret=***"},
	}
	for _, tt := range tests {
		if got := maskQuery(tt.in); got != tt.want {
			t.Errorf("maskQuery(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestEmulatorUnknownPathAnswers404JSON(t *testing.T) {
	h := newHarness(t)
	a := h.do("GET", "/openapi/v9/nothing", nil, nil, nil)
	if a.status != 404 || a.raw["errno"] == nil {
		t.Fatalf("%d %+v", a.status, a.raw)
	}
	if a := h.do("PUT", PathV1ComponentToken, nil, nil, nil); a.status != 405 {
		t.Fatalf("PUT: %d", a.status)
	}
	// v2 paths match without their trailing slash too.
	if a := h.do("GET", strings.TrimSuffix(PathV2ComponentToken, "/"), nil, nil, nil); a.status != 200 || a.code != ErrnoParam {
		t.Fatalf("v2 path without slash: %d %+v", a.status, a.raw)
	}
}

func TestEmulatorFaultErrno40045ThenRecovers(t *testing.T) {
	h := newHarness(t)
	comp := h.componentToken(v2)
	_, rt := h.mustExchange(v2, comp, appA)
	if err := h.e.SetFaults(OpRefresh, Faults{Errno40045: 2}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if a := h.refresh(v2, comp, rt); a.code != ErrnoRetry || a.raw["err_no"] == nil {
			t.Fatalf("call %d: %+v, want err_no 40045", i, a.raw)
		}
	}
	if a := h.refresh(v2, comp, rt); a.code != 0 {
		t.Fatalf("after the faults: %+v (the faulted calls must not take effect)", a.raw)
	}
	if s := h.e.Stats(); s.Calls[OpRefresh] != 3 || s.Faulted[OpRefresh] != 2 || s.App(appA).Refreshes != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestEmulatorFaultHTTP5xxAlternates502And503(t *testing.T) {
	h := newHarness(t)
	h.e.SetFaults(OpComponentToken, Faults{HTTP5xx: 2})
	var got []int
	for range 3 {
		got = append(got, h.componentTokenCall(v1, tpAppID, tpSecret, h.e.Ticket()).status)
	}
	if !slices.Equal(got, []int{502, 503, 200}) {
		t.Fatalf("statuses %v", got)
	}
}

func TestEmulatorFaultDropResponseTakesEffectThenBreaksTheConnection(t *testing.T) {
	bothFamilies(t, func(t *testing.T, f tokensource.Family) {
		h := newHarness(t)
		comp := h.componentToken(f)
		access, rt := h.mustExchange(f, comp, appA)
		h.e.SetFaults(OpRefresh, Faults{DropResponse: 1, AppID: appA})
		q := url.Values{"grant_type": {GrantRefresh}, "authorizer_refresh_token": {rt}}
		path, hdr := PathV2AuthToken, http.Header{"Access-Token": {comp}}
		if f == v1 {
			q.Set("component_appid", tpAppID)
			q.Set("component_access_token", comp)
			path, hdr = PathV1OAuthToken, nil
		}
		req, _ := http.NewRequest("GET", h.srv.URL+path+"?"+q.Encode(), nil)
		req.Header = hdr
		if hdr == nil {
			req.Header = http.Header{}
		}
		// A fresh connection: on a reused one, net/http's Transport silently
		// retries an idempotent request that got no response, and the retry
		// would see 40021 instead of the broken connection.
		fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := fresh.Do(req)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("got a response (%d), want a broken connection", resp.StatusCode)
		}
		// The refresh took effect: the old pair is burned.
		if a := h.refresh(f, comp, rt); a.code != ErrnoRefreshTokenInvalid {
			t.Fatalf("old refresh token after the dropped refresh: %+v, want 40021", a.raw)
		}
		if d := h.downstream(f, access); d.code != invalidCode(f) {
			t.Fatalf("old access token after the dropped refresh: %+v", d.raw)
		}
		if s := h.e.Stats(); s.App(appA).Refreshes != 1 || s.App(appA).Refresh40021 != 1 {
			t.Fatalf("stats %+v", s.App(appA))
		}
	})
}

func TestEmulatorFaultLatencyDelaysTheCall(t *testing.T) {
	h := newHarness(t)
	h.e.SetFaults(OpAll, Faults{Latency: 60 * time.Millisecond})
	start := time.Now()
	if a := h.componentTokenCall(v1, tpAppID, tpSecret, h.e.Ticket()); a.code != 0 {
		t.Fatalf("%+v", a.raw)
	}
	if d := time.Since(start); d < 60*time.Millisecond {
		t.Fatalf("answered after %v, want at least 60ms", d)
	}
	// The client's deadline ends the wait.
	h.e.SetFaults(OpAll, Faults{Latency: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", h.srv.URL+PathV1ComponentToken, nil)
	if _, err := h.srv.Client().Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline", err)
	}
}

func TestEmulatorFaultDownUntilCleared(t *testing.T) {
	h := newHarness(t)
	comp := h.componentToken(v1)
	access, _ := h.mustExchange(v1, comp, appA)
	h.e.SetFaults(OpAll, Faults{Down: true})
	for range 3 {
		if d := h.downstream(v1, access); d.status != 503 {
			t.Fatalf("down: %d", d.status)
		}
	}
	if a := h.componentTokenCall(v1, tpAppID, tpSecret, h.e.Ticket()); a.status != 503 {
		t.Fatalf("down: %d", a.status)
	}
	h.e.ClearFaults()
	if d := h.downstream(v1, access); d.status != 200 || d.code != 0 {
		t.Fatalf("after clearing: %d %+v", d.status, d.raw)
	}
}

func TestEmulatorFaultLimitedToOneAppID(t *testing.T) {
	h := newHarness(t)
	comp := h.componentToken(v1)
	a, _ := h.mustExchange(v1, comp, appA)
	b, _ := h.mustExchange(v1, comp, appB)
	h.e.SetFaults(OpDownstream, Faults{Errno40045: 5, AppID: appB})
	if d := h.downstream(v1, a); d.code != 0 {
		t.Fatalf("appA: %+v", d.raw)
	}
	if d := h.downstream(v1, b); d.code != ErrnoRetry {
		t.Fatalf("appB: %+v", d.raw)
	}
	if err := h.e.SetFaults("nope", Faults{Down: true}); err == nil {
		t.Fatal("unknown op accepted")
	}
	if err := h.e.SetFaults(OpRefresh, Faults{HTTP5xx: -1}); err == nil {
		t.Fatal("negative count accepted")
	}
}

// waitFor polls cond until it holds, failing the test after 5 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond) // polling interval, not a wait for the condition
	}
}

// receiver is a push endpoint that decrypts with push.Crypto.
type receiver struct {
	srv   *httptest.Server
	msgs  chan *push.Message
	fails atomic.Int32 // answer the next N pushes with "fail"
	hits  atomic.Int32
}

// newReceiver receives the pushes of tpAppID, or of the given component appid.
func newReceiver(t *testing.T, componentAppID ...string) *receiver {
	t.Helper()
	tp := tpAppID
	if len(componentAppID) > 0 {
		tp = componentAppID[0]
	}
	pc, err := push.NewCrypto(msgToken, aesKey, tp)
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{msgs: make(chan *push.Message, 64)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.hits.Add(1)
		if r.fails.Load() > 0 {
			r.fails.Add(-1)
			http.Error(w, "fail", http.StatusInternalServerError)
			return
		}
		b, _ := io.ReadAll(req.Body)
		m, err := pc.Open(b)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.msgs <- m
		io.WriteString(w, "success")
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// next waits (with a deadline) for the next decrypted push.
func (r *receiver) next(t *testing.T) *push.Message {
	t.Helper()
	select {
	case m := <-r.msgs:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no push within 5s")
		return nil
	}
}

func TestEmulatorPushesDecryptWithPushCrypto(t *testing.T) {
	rcv := newReceiver(t)
	h := newHarness(t, func(c *Config) { c.PushURL = rcv.srv.URL })
	if err := h.e.PushTicket(context.Background()); err != nil {
		t.Fatal(err)
	}
	m := rcv.next(t)
	if m.Kind != push.Ticket || m.Ticket.Reveal() != h.e.Ticket() || !m.CreateTime.Equal(h.clock.Now()) {
		t.Fatalf("ticket push %+v", m)
	}
	code, err := h.e.Authorize(appA, true)
	if err != nil {
		t.Fatal(err)
	}
	m = rcv.next(t)
	if m.Kind != push.Authorized || m.AppID != appA || m.TpAppID != tpAppID || m.AuthorizationCode.Reveal() != code ||
		m.CodeExpiresIn != 3600 || !m.EventTime.Equal(h.clock.Now()) {
		t.Fatalf("AUTHORIZED push %+v", m)
	}
	if err := h.e.Unauthorize(appA, true); err != nil {
		t.Fatal(err)
	}
	if m = rcv.next(t); m.Kind != push.Unauthorized || m.AppID != appA {
		t.Fatalf("UNAUTHORIZED push %+v", m)
	}
	// The ticket pushed is accepted by the token endpoint.
	if a := h.componentTokenCall(v2, tpAppID, tpSecret, h.e.Ticket()); a.code != 0 {
		t.Fatalf("pushed ticket: %+v", a.raw)
	}
	// A receiver that does not answer "success" fails the push.
	rcv.fails.Store(1)
	if err := h.e.PushTicket(context.Background()); !errors.Is(err, ErrPushRejected) {
		t.Fatalf("err = %v, want ErrPushRejected", err)
	}
	if s := h.e.Stats(); s.Total.PushesSent != 3 || s.Total.PushesFailed != 1 || s.App(appA).PushesSent != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestEmulatorAuthorizeWithoutPushURL(t *testing.T) {
	h := newHarness(t)
	code, err := h.e.Authorize(appA, true)
	if code == "" || !errors.Is(err, ErrNoPushURL) {
		t.Fatalf("code %q, err %v", code, err)
	}
	if err := h.e.PushTicket(context.Background()); err != nil {
		t.Fatalf("PushTicket without URL: %v", err)
	}
	if _, err := h.e.Authorize("bad appid!", false); err == nil {
		t.Fatal("invalid appid accepted")
	}
}

func TestEmulatorRunPushesTicketsRetriesAndStops(t *testing.T) {
	rcv := newReceiver(t)
	rcv.fails.Store(2) // the first two attempts fail: Run retries
	h := newHarness(t, func(c *Config) {
		c.PushURL = rcv.srv.URL
		c.TicketInterval = 20 * time.Millisecond
		c.Authorize = []string{appA}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.e.Run(ctx)
	}()
	if m := rcv.next(t); m.Kind != push.Ticket {
		t.Fatalf("first push %+v", m)
	}
	authorized := rcv.next(t)
	if authorized.Kind != push.Authorized || authorized.AppID != appA {
		t.Fatalf("second push %+v, want AUTHORIZED for the start list", authorized)
	}
	if m := rcv.next(t); m.Kind != push.Ticket {
		t.Fatalf("third push %+v, want the next ticket", m)
	}
	// A second Run while one is active returns at once.
	h.e.Run(context.Background())
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	// The push in flight when ctx ended may count as failed too.
	if s := h.e.Stats(); s.Total.PushesFailed < 2 || s.Total.PushesSent < 2 {
		t.Fatalf("stats %+v", s.Total)
	}
	// The authorizer from the start list exchanges its pushed code.
	if a := h.exchange(v1, h.componentToken(v1), authorized.AuthorizationCode.Reveal()); a.code != 0 || a.str("authorizer_appid") != appA {
		t.Fatalf("exchange of the pushed code: %+v", a.raw)
	}
}

func TestEmulatorCloseEndsRun(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.TicketInterval = time.Hour })
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.e.Run(context.Background())
	}()
	// Whether Close comes before or after Run started, Run must return.
	h.e.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
}

func TestEmulatorIsDeterministicForASeed(t *testing.T) {
	run := func(seed int64) []string {
		h := newHarness(t, func(c *Config) { c.Seed = seed })
		comp := h.componentToken(v2)
		a, r := h.mustExchange(v2, comp, appA)
		return []string{h.e.Ticket(), comp, a, r}
	}
	x, y, z := run(7), run(7), run(8)
	if !slices.Equal(x, y) {
		t.Fatalf("same seed, different values:\n%v\n%v", x, y)
	}
	for i := range x {
		if x[i] == z[i] {
			t.Fatalf("different seeds, same value %d", i)
		}
	}
}

func TestEmulatorNeverLogsASecret(t *testing.T) {
	rcv := newReceiver(t)
	h := newHarness(t, func(c *Config) { c.PushURL = rcv.srv.URL })
	h.e.PushTicket(context.Background())
	comp := h.componentToken(v1)
	c2 := h.componentToken(v2)
	access, rt := h.mustExchange(v1, comp, appA)
	h.refresh(v1, comp, rt)
	h.refresh(v1, comp, rt) // 40021, logged with a fingerprint
	h.downstream(v1, access)
	h.do("POST", PathV2Retrieve, nil, http.Header{"Access-Token": {c2}}, []byte(`{"authorization_appid":"`+appA+`"}`))
	rcv.next(t)
	rcv.next(t)
	h.e.SetFaults(OpAll, Faults{Errno40045: 1})
	h.downstream(v1, access)
	h.e.Close() // ends and waits for background pushes, so every line is in

	secrets := h.e.IssuedSecrets()
	if len(secrets) < 10 || !slices.Contains(secrets, tpSecret) || !slices.Contains(secrets, rt) || !slices.Contains(secrets, comp) {
		t.Fatalf("IssuedSecrets incomplete: %d values", len(secrets))
	}
	if h.logs.Len() == 0 {
		t.Fatal("nothing logged")
	}
	for _, entry := range h.logs.All() {
		line, _ := json.Marshal(map[string]any{"msg": entry.Message, "fields": entry.ContextMap()})
		for _, s := range secrets {
			if strings.Contains(string(line), s) {
				t.Fatalf("log line leaks a secret: %s", line)
			}
		}
	}
}

func TestEmulatorNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no appid", Config{ComponentAppSecret: "topsecret"}},
		{"no secret", Config{ComponentAppID: tpAppID}},
		{"bad appid", Config{ComponentAppID: "a b", ComponentAppSecret: "topsecret"}},
		{"bad key", Config{ComponentAppID: tpAppID, ComponentAppSecret: "topsecret", MessageToken: "t", EncodingAESKey: "short"}},
		{"push url without crypto", Config{ComponentAppID: tpAppID, ComponentAppSecret: "topsecret", PushURL: "http://127.0.0.1:1/"}},
		{"push url not http", Config{ComponentAppID: tpAppID, ComponentAppSecret: "topsecret", MessageToken: msgToken, EncodingAESKey: aesKey, PushURL: "ftp://x"}},
		{"negative ttl", Config{ComponentAppID: tpAppID, ComponentAppSecret: "topsecret", CodeTTL: -time.Second}},
		{"bad start appid", Config{ComponentAppID: tpAppID, ComponentAppSecret: "topsecret", Authorize: []string{"x y"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := New(tt.cfg)
			if err == nil {
				e.Close()
				t.Fatal("accepted")
			}
			if strings.Contains(err.Error(), aesKey) || strings.Contains(err.Error(), "topsecret") {
				t.Fatalf("error echoes a secret: %v", err)
			}
		})
	}
}

func TestEmulatorSetLifetimesAppliesToNewTokens(t *testing.T) {
	h := newHarness(t)
	comp := h.componentToken(v1)
	old, _ := h.mustExchange(v1, comp, appA)
	h.e.SetLifetimes(Lifetimes{AccessTokenTTL: time.Minute})
	code, _ := h.e.Authorize(appB, false)
	a := h.exchange(v1, comp, code)
	if a.num("expires_in") != 60 || h.e.Lifetimes().RefreshTokenTTL != DefaultRefreshTokenTTL {
		t.Fatalf("%+v", a.data)
	}
	h.clock.Advance(time.Minute)
	if d := h.downstream(v1, a.str("authorizer_access_token")); d.code != ErrnoAccessTokenInvalid {
		t.Fatalf("short-lived token: %+v", d.raw)
	}
	if d := h.downstream(v1, old); d.code != 0 {
		t.Fatalf("token issued before the change: %+v", d.raw)
	}
}

// doHost is do with the request sent for host (as a sidecar serving the
// platform's names forwards it: reverse_proxy keeps the client's Host); ""
// keeps the server's address.
func (h *harness) doHost(host, method, path string, q url.Values, hdr http.Header, body []byte) answer {
	h.t.Helper()
	u := h.srv.URL + path
	if q != nil {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := h.srv.Client().Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	return decodeAnswer(h.t, resp)
}

func (a answer) carriers() map[string]int64 {
	m := map[string]int64{}
	raw, _ := a.data["token_carriers"].(map[string]any)
	for k, v := range raw {
		n, _ := v.(json.Number).Int64()
		m[k] = n
	}
	return m
}

func TestEmulatorAnyPathOnAPlatformHostIsAnAPIOfThatHostsFamily(t *testing.T) {
	h := newHarness(t)
	c1, c2 := h.componentToken(v1), h.componentToken(v2)
	a1, _ := h.mustExchange(v1, c1, appA)
	a2, _ := h.mustExchange(v2, c2, appB)
	v1q := url.Values{"component_appid": {tpAppID}, "authorizer_access_token": {a1}, "x": {"1"}}
	tests := []struct {
		name, host, method, path string
		q                        url.Values
		hdr                      http.Header
		family, appid            string
	}{
		{"v2 GET on open.douyin.com", "open.douyin.com", "GET", "/goodlife/v1/fulfilment/certificate/get/", url.Values{"x": {"1"}},
			http.Header{"Access-Token": {a2}}, "v2", appB},
		{"v2 POST, host with port", "open.douyin.com:443", "POST", "/api/apps/v1/qrcode/create/", nil,
			http.Header{"Access-Token": {a2}, "Content-Type": {"application/json"}}, "v2", appB},
		{"developer.toutiao.com, header access_token", "developer.toutiao.com", "POST", "/auth/entity/get_basic_auth", nil,
			http.Header{"Access_token": {a2}}, "v2", appB},
		{"developer.toutiao.com, header x-token", "Developer.Toutiao.com", "POST", "/api/v2/tags/text/antidirt", nil,
			http.Header{"X-Token": {a2}}, "v2", appB},
		{"v1 on open.microapp.bytedance.com, any path", "open.microapp.bytedance.com", "GET", "/openapi/v3/microapp/anything", v1q,
			nil, "v1", appA},
		{"v1 /api/ path on the v1 host", "open.microapp.bytedance.com", "POST", "/api/apps/qrcode", v1q, nil, "v1", appA},
	}
	for _, tt := range tests {
		a := h.doHost(tt.host, tt.method, tt.path, tt.q, tt.hdr, []byte(`{"k":"v"}`))
		if a.status != 200 || a.code != 0 || a.str("family") != tt.family || a.str("appid") != tt.appid ||
			a.str("token") != "authorizer" || a.str("method") != tt.method || a.str("path") != tt.path || a.num("body_len") != 9 {
			t.Errorf("%s: %d %+v", tt.name, a.status, a.raw)
		}
		if strings.Contains(a.str("query"), a1) {
			t.Errorf("%s: token echoed: %q", tt.name, a.str("query"))
		}
	}
	// The family is the host's, not the path's: a token of the other family is refused.
	if a := h.doHost("open.douyin.com", "GET", "/openapi/v1/microapp/app/info", v1q, nil, nil); a.code != ErrNoV2AccessTokenInvalid {
		t.Errorf("v1 call sent to open.douyin.com: %+v", a.raw)
	}
	if a := h.doHost("open.microapp.bytedance.com", "GET", "/api/apps/v1/x/", nil, http.Header{"Access-Token": {a2}}, nil); a.code != ErrnoMissing {
		t.Errorf("v2 call sent to the v1 host: %+v", a.raw)
	}
	if s := h.e.Stats(); s.App(appA).DownstreamOK != 2 || s.App(appB).DownstreamOK != 4 || s.Calls[OpDownstream] != 8 {
		t.Errorf("stats: %+v", s)
	}
}

func TestEmulatorAPIsRefuseBadTokensInTheFamilysEnvelope(t *testing.T) {
	h := newHarness(t)
	c1, c2 := h.componentToken(v1), h.componentToken(v2)
	a1, r1 := h.mustExchange(v1, c1, appA)
	a2, _ := h.mustExchange(v2, c2, appA)
	const v1Host, v2Host = "open.microapp.bytedance.com", "open.douyin.com"
	v1q := func(kv ...string) url.Values {
		q := url.Values{"component_appid": {tpAppID}}
		for i := 0; i < len(kv); i += 2 {
			q.Set(kv[i], kv[i+1])
		}
		return q
	}
	v2h := func(tok string) http.Header { return http.Header{"Access-Token": {tok}} }
	tests := []struct {
		name, host, path string
		q                url.Values
		hdr              http.Header
		want             int
	}{
		{"v2 no token", v2Host, "/data/extern/fans/source/", nil, nil, ErrNoV2AccessTokenInvalid},
		{"v2 unknown token", v2Host, "/data/extern/fans/source/", nil, v2h("isvact.nope"), ErrNoV2AccessTokenInvalid},
		{"v2 component token on an authorizer API", v2Host, "/api/apps/v1/x/", nil, v2h(c2), ErrNoV2AccessTokenInvalid},
		{"v2 authorizer token on a TP API", v2Host, "/api/tpapp/v2/template/get_tpl_list/", nil, v2h(a2), ErrnoComponentInvalid},
		{"v2 no token on a TP API", v2Host, "/api/tpapp/v2/template/get_tpl_list/", nil, nil, ErrnoParam},
		{"v1 no token", v1Host, "/openapi/v1/microapp/app/modify_app_name", v1q(), nil, ErrnoMissing},
		{"v1 no component_appid", v1Host, "/openapi/v1/microapp/x", url.Values{"authorizer_access_token": {a1}}, nil, ErrnoMissing},
		{"v1 refresh token as access token", v1Host, "/openapi/v1/microapp/x", v1q("authorizer_access_token", r1), nil, ErrnoAccessTokenInvalid},
		{"v1 component token on an authorizer API", v1Host, "/openapi/v1/microapp/x", v1q("authorizer_access_token", c1), nil, ErrnoAccessTokenInvalid},
		{"v1 authorizer token on a TP API", v1Host, "/openapi/v1/tp/template/list", v1q("component_access_token", a1), nil, ErrnoComponentInvalid},
		{"v1 no token on a TP API", v1Host, "/openapi/v2/auth/pre_auth_code", v1q(), nil, ErrnoParam},
	}
	for _, tt := range tests {
		a := h.doHost(tt.host, "POST", tt.path, tt.q, tt.hdr, nil)
		if a.status != 200 || a.code != tt.want {
			t.Errorf("%s: %d %+v, want HTTP 200 and %d", tt.name, a.status, a.raw, tt.want)
		}
		if _, ok := a.raw["err_no"]; ok != (tt.host == v2Host) {
			t.Errorf("%s: not in the %s envelope: %+v", tt.name, tt.host, a.raw)
		}
	}
	// Expired tokens: 28001008 (v2), 40020 (v1); 40009 for a component token.
	h.clock.Advance(DefaultAccessTokenTTL)
	if a := h.doHost(v2Host, "GET", "/api/apps/v1/x/", nil, v2h(a2), nil); a.code != ErrNoV2AccessTokenExpired {
		t.Errorf("v2 expired: %+v", a.raw)
	}
	if a := h.doHost(v1Host, "GET", "/openapi/v1/microapp/x", v1q("authorizer_access_token", a1), nil, nil); a.code != ErrnoAccessTokenInvalid {
		t.Errorf("v1 expired: %+v", a.raw)
	}
	if a := h.doHost(v1Host, "GET", "/openapi/v1/tp/template/list", v1q("component_access_token", c1), nil, nil); a.code != ErrnoComponentExpired {
		t.Errorf("v1 component token expired: %+v", a.raw)
	}
}

func TestEmulatorTPLevelAPIsTakeTheComponentToken(t *testing.T) {
	h := newHarness(t)
	c1, c2 := h.componentToken(v1), h.componentToken(v2)
	a := h.doHost("open.douyin.com", "POST", "/api/tpapp/v2/template/get_tpl_list/", nil,
		http.Header{"Access-Token": {c2}}, []byte(`{}`))
	if a.code != 0 || a.str("appid") != tpAppID || a.str("token") != "component" || a.str("family") != "v2" {
		t.Fatalf("v2 TP API: %+v", a.raw)
	}
	// On a loopback host the path decides: /openapi/v1/tp/ is a v1 TP API.
	a = h.do("GET", "/openapi/v1/tp/template/list", url.Values{"component_appid": {tpAppID}, "component_access_token": {c1}}, nil, nil)
	if a.code != 0 || a.str("appid") != tpAppID || a.str("token") != "component" || a.str("family") != "v1" ||
		a.str("query") != "component_access_token=***&component_appid="+tpAppID {
		t.Fatalf("v1 TP API: %+v", a.raw)
	}
	if s := h.e.Stats(); s.Total.DownstreamOK != 2 || len(s.PerApp) != 0 {
		t.Fatalf("stats: %+v", s)
	}
}

func TestEmulatorLoopbackHostsTellTheFamilyByPath(t *testing.T) {
	h := newHarness(t)
	for _, tt := range []struct {
		path   string
		status int
		code   int
	}{
		{"/openapi/v1/any/thing", 200, ErrnoMissing},       // v1 API, no token
		{"/openapi/v2/microapp/x", 200, ErrnoMissing},      // v1 API (legacy host's v2 paths), no token
		{"/api/whatever/", 200, ErrNoV2AccessTokenInvalid}, // v2 API, no token
		{"/goodlife/v1/x/", 404, http.StatusNotFound},      // only on a platform host
		{"/openapi/v9/nothing", 404, http.StatusNotFound},  // not an API version
	} {
		if a := h.do("GET", tt.path, nil, nil, nil); a.status != tt.status || a.code != tt.code {
			t.Errorf("%s: %d %+v, want %d / %d", tt.path, a.status, a.raw, tt.status, tt.code)
		}
	}
	if a := h.doHost("open.douyin.com", "GET", "/goodlife/v1/x/", nil, nil, nil); a.status != 200 || a.code != ErrNoV2AccessTokenInvalid {
		t.Errorf("platform host: %d %+v", a.status, a.raw)
	}
}

func TestEmulatorEchoCountsEveryTokenCarrierAndMasksValues(t *testing.T) {
	h := newHarness(t)
	c2 := h.componentToken(v2)
	a2, _ := h.mustExchange(v2, c2, appA)
	q := "access_token=" + a2 + "&component_access_token=" + c2 + "&keep=1"
	a := h.doHost("open.douyin.com", "GET", "/api/apps/v1/x/?"+q, nil,
		http.Header{"Access-Token": {a2}, "Access_token": {"copy"}, "X-Token": {"c1", "c2"}}, nil)
	want := map[string]int64{"header:access-token": 1, "header:access_token": 1, "header:x-token": 2,
		"query:access_token": 1, "query:component_access_token": 1}
	if got := a.carriers(); a.code != 0 || !maps.Equal(got, want) {
		t.Fatalf("carriers %v, want %v (%+v)", got, want, a.raw)
	}
	if a.str("query") != "access_token=***&component_access_token=***&keep=1" {
		t.Fatalf("query not masked: %q", a.str("query"))
	}
	// access-token wins over the other names when both are sent.
	a = h.doHost("open.douyin.com", "GET", "/api/apps/v1/x/", nil, http.Header{"Access-Token": {a2}, "X-Token": {"stale"}}, nil)
	if a.code != 0 || a.str("appid") != appA {
		t.Fatalf("access-token first: %+v", a.raw)
	}
	a = h.doHost("open.douyin.com", "GET", "/api/apps/v1/x/", nil, http.Header{"Access-Token": {"stale"}, "X-Token": {a2}}, nil)
	if a.code != ErrNoV2AccessTokenInvalid {
		t.Fatalf("a stale access-token must not fall back to x-token: %+v", a.raw)
	}
}
