package emulator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

// control calls the /_emulator/ surface and decodes the JSON answer.
func (h *harness) control(method, path, body string) (int, map[string]any) {
	h.t.Helper()
	req, _ := http.NewRequest(method, h.srv.URL+"/_emulator/"+path, bytes.NewReader([]byte(body)))
	resp, err := h.srv.Client().Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		h.t.Fatalf("%s %s: not JSON: %v", method, path, err)
	}
	return resp.StatusCode, out
}

func TestEmulatorControlSurfaceDrivesTheEmulator(t *testing.T) {
	rcv := newReceiver(t)
	h := newHarness(t)

	if st, out := h.control("POST", "push_url", `{"push_url":"`+rcv.srv.URL+`"}`); st != 200 || out["ok"] != true {
		t.Fatalf("push_url: %d %v", st, out)
	}
	if st, _ := h.control("POST", "ticket", ""); st != 200 {
		t.Fatalf("ticket: %d", st)
	}
	if m := rcv.next(t); m.Kind != push.Ticket {
		t.Fatalf("push %+v", m)
	}
	st, out := h.control("POST", "authorize", `{"appid":"`+appA+`","push":true}`)
	code, _ := out["authorization_code"].(string)
	if st != 200 || code == "" || out["expires_in"] != float64(3600) {
		t.Fatalf("authorize: %d %v", st, out)
	}
	if m := rcv.next(t); m.Kind != push.Authorized || m.AuthorizationCode.Reveal() != code {
		t.Fatalf("push %+v", m)
	}
	comp := h.componentToken(tokensource.V1)
	if a := h.exchange(tokensource.V1, comp, code); a.code != 0 {
		t.Fatalf("exchange: %+v", a.raw)
	}

	if st, _ := h.control("POST", "revoke", `{"appid":"`+appA+`","family":"v1"}`); st != 200 {
		t.Fatalf("revoke: %d", st)
	}
	if st, _ := h.control("POST", "revoke", `{"appid":"`+appA+`","family":"v2"}`); st != 404 {
		t.Fatalf("revoke without a v2 chain: %d", st)
	}
	if st, _ := h.control("POST", "expire", `{"appid":"`+appA+`","family":"v3"}`); st != 400 {
		t.Fatalf("bad family: %d", st)
	}

	st, out = h.control("POST", "lifetimes", `{"access_token_ttl":"90s","v2_grace":"1m"}`)
	if st != 200 || out["access_token_ttl"] != "1m30s" || out["v2_grace"] != "1m0s" || out["code_ttl"] != "1h0m0s" {
		t.Fatalf("lifetimes: %d %v", st, out)
	}
	if st, _ := h.control("POST", "lifetimes", `{"code_ttl":"soon"}`); st != 400 {
		t.Fatalf("bad lifetime: %d", st)
	}
	if h.e.Lifetimes().AccessTokenTTL != 90*time.Second {
		t.Fatal("lifetime not applied")
	}

	if st, _ := h.control("POST", "faults", `{"op":"downstream","errno_40045":1,"latency":"1ms","appid":"`+appA+`"}`); st != 200 {
		t.Fatalf("faults: %d", st)
	}
	if st, out := h.control("GET", "faults", ""); st != 200 || out["downstream"] == nil {
		t.Fatalf("get faults: %d %v", st, out)
	}
	if st, _ := h.control("POST", "faults", `{"op":"everything","down":true}`); st != 400 {
		t.Fatalf("unknown op: %d", st)
	}
	if st, _ := h.control("POST", "faults", `{"op":"*","latency":"x"}`); st != 400 {
		t.Fatalf("bad latency: %d", st)
	}
	if st, _ := h.control("DELETE", "faults", ""); st != 200 || len(h.e.Faults()) != 0 {
		t.Fatalf("clear faults: %d", st)
	}

	if st, out := h.control("POST", "unauthorize", `{"appid":"`+appA+`","push":true}`); st != 200 || out["ok"] != true {
		t.Fatalf("unauthorize: %d %v", st, out)
	}
	if m := rcv.next(t); m.Kind != push.Unauthorized {
		t.Fatalf("push %+v", m)
	}
	if st, _ := h.control("POST", "unauthorize", `{"appid":"tt0000000000000009"}`); st != 404 {
		t.Fatalf("unauthorize unknown: %d", st)
	}
	if st, out := h.control("GET", "authorizers", ""); st != 200 || out[appA] != false {
		t.Fatalf("authorizers: %d %v", st, out)
	}

	st, out = h.control("GET", "stats", "")
	total, _ := out["total"].(map[string]any)
	per, _ := out["per_appid"].(map[string]any)
	if st != 200 || total["exchanges"] != float64(1) || total["pushes_sent"] != float64(3) || per[appA] == nil {
		t.Fatalf("stats: %d %v", st, out)
	}
	st, out = h.control("GET", "secrets", "")
	list, _ := out["secrets"].([]any)
	found := false
	for _, s := range list {
		found = found || s == code
	}
	if st != 200 || !found {
		t.Fatalf("secrets do not list the code: %d %d values", st, len(list))
	}

	if st, _ := h.control("POST", "authorize", `{"appid":`); st != 400 {
		t.Fatalf("bad JSON: %d", st)
	}
	if st, _ := h.control("POST", "authorize", `{"appid":"not valid"}`); st != 400 {
		t.Fatalf("bad appid: %d", st)
	}
	if st, _ := h.control("GET", "nothing", ""); st != 404 {
		t.Fatalf("unknown control route: %d", st)
	}
}

func TestEmulatorControlReportsPushFailures(t *testing.T) {
	rcv := newReceiver(t)
	h := newHarness(t, func(c *Config) { c.PushURL = rcv.srv.URL })
	rcv.fails.Store(2)
	st, out := h.control("POST", "authorize", `{"appid":"`+appA+`","push":true}`)
	if st != http.StatusBadGateway || out["authorization_code"] == "" || out["error"] == nil {
		t.Fatalf("authorize with a failing receiver: %d %v", st, out)
	}
	if st, _ := h.control("POST", "ticket", ""); st != http.StatusBadGateway {
		t.Fatalf("ticket with a failing receiver: %d", st)
	}
	// The code is valid although its push failed.
	comp := h.componentToken(tokensource.V2)
	if a := h.exchange(tokensource.V2, comp, out["authorization_code"].(string)); a.code != 0 {
		t.Fatalf("%+v", a.raw)
	}
}

func TestEmulatorCallsLogShowsWhatTheAPIsReceivedAndKeepsTheLast100(t *testing.T) {
	h := newHarness(t)
	c2 := h.componentToken(tokensource.V2)
	a2, _ := h.mustExchange(tokensource.V2, c2, appA)
	h.doHost("open.douyin.com", "POST", "/api/apps/v1/qrcode/create/", url.Values{"access_token": {a2}, "k": {"v"}},
		http.Header{"Access-Token": {a2}, "X-Token": {"copy"}}, []byte(`{"path":"x"}`))
	h.doHost("open.douyin.com", "GET", "/api/apps/v1/x/", nil, http.Header{"Access-Token": {"isvact.stale"}}, nil)
	h.do("GET", PathV2AppList, url.Values{"page": {"1"}, "size": {"1"}}, http.Header{"Access-Token": {c2}}, nil) // a token endpoint: not logged

	st, out := h.control("GET", "calls", "")
	calls, _ := out["calls"].([]any)
	if st != 200 || len(calls) != 2 {
		t.Fatalf("calls: %d %v", st, out)
	}
	ok, bad := calls[0].(map[string]any), calls[1].(map[string]any)
	if ok["host"] != "open.douyin.com" || ok["code"] != float64(0) || ok["appid"] != appA || ok["token"] != "authorizer" ||
		ok["method"] != "POST" || ok["path"] != "/api/apps/v1/qrcode/create/" || ok["query"] != "access_token=***&k=v" ||
		ok["body_len"] != float64(12) || ok["family"] != "v2" {
		t.Fatalf("first call: %v", ok)
	}
	if c := ok["token_carriers"].(map[string]any); c["header:access-token"] != float64(1) || c["header:x-token"] != float64(1) || c["query:access_token"] != float64(1) {
		t.Fatalf("carriers: %v", c)
	}
	if bad["code"] != float64(ErrNoV2AccessTokenInvalid) || bad["appid"] != "" {
		t.Fatalf("refused call: %v", bad)
	}
	b, _ := json.Marshal(out)
	if bytes.Contains(b, []byte(a2)) {
		t.Fatal("the calls log holds a token value")
	}

	for i := 0; i < maxRecentCalls+5; i++ {
		h.doHost("open.douyin.com", "GET", fmt.Sprintf("/api/apps/v1/n%d/", i), nil, http.Header{"Access-Token": {a2}}, nil)
	}
	if l := h.e.RecentCalls(); len(l) != maxRecentCalls || l[0].Path != "/api/apps/v1/n5/" || l[len(l)-1].Path != fmt.Sprintf("/api/apps/v1/n%d/", maxRecentCalls+4) {
		t.Fatalf("kept %d calls, first %q", len(l), l[0].Path)
	}
	if st, _ := h.control("DELETE", "calls", ""); st != 200 || len(h.e.RecentCalls()) != 0 {
		t.Fatalf("DELETE calls: %d, %d left", st, len(h.e.RecentCalls()))
	}
}
