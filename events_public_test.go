package tptoken

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

// Tests of the public surface (tptoken_events) under hostile traffic, through a
// real Caddy: what a flood from the internet costs the TP in platform calls,
// call slots, log lines, and what it does to legitimate work meanwhile.

// platformWatch sees every call the platform receives: how many of each kind
// are in flight (from arrival until the platform starts answering), the most
// at once, and how many exchanges were in flight when each refresh arrived.
type platformWatch struct {
	mu                 sync.Mutex
	inFlight, most     map[string]int
	exchangesAtRefresh []int
}

func newPlatformWatch() *platformWatch {
	return &platformWatch{inFlight: map[string]int{}, most: map[string]int{}}
}

func platformOp(r *http.Request) string {
	if strings.HasSuffix(r.URL.Path, "/oauth/token") || strings.Contains(r.URL.Path, "/get_auth_token") {
		if r.URL.Query().Get("grant_type") == emulator.GrantRefresh {
			return emulator.OpRefresh
		}
		return emulator.OpExchange
	}
	return "other"
}

func (pw *platformWatch) observe(w http.ResponseWriter, r *http.Request) http.ResponseWriter {
	op := platformOp(r)
	pw.mu.Lock()
	if op == emulator.OpRefresh {
		pw.exchangesAtRefresh = append(pw.exchangesAtRefresh, pw.inFlight[emulator.OpExchange])
	}
	pw.inFlight[op]++
	pw.most[op] = max(pw.most[op], pw.inFlight[op])
	pw.mu.Unlock()
	return &answerWatch{ResponseWriter: w, answered: func() {
		pw.mu.Lock()
		pw.inFlight[op]--
		pw.mu.Unlock()
	}}
}

func (pw *platformWatch) now(op string) int {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	return pw.inFlight[op]
}

// answerWatch calls answered once, when the platform starts its answer: the
// caller cannot have it before.
type answerWatch struct {
	http.ResponseWriter
	once     sync.Once
	answered func()
}

func (a *answerWatch) WriteHeader(code int) {
	a.once.Do(a.answered)
	a.ResponseWriter.WriteHeader(code)
}

func (a *answerWatch) Write(b []byte) (int, error) {
	a.once.Do(a.answered)
	return a.ResponseWriter.Write(b)
}

func (a *answerWatch) Unwrap() http.ResponseWriter { return a.ResponseWriter }

// madeUpCode is what an attacker sends: a code of the emulator's shape (40 hex
// digits), or every tenth time (notACode) something that cannot be a code.
func madeUpCode(i int) string {
	if notACode(i) {
		return fmt.Sprintf("<script>%d</script>", i)
	}
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func notACode(i int) bool { return i%10 == 9 }

type floodResult struct {
	total     int
	byStatus  map[int]int
	malformed int
	errors    int
}

// floodRedirect sends redirects with made-up codes from workers clients at once: at
// least n, and for at least minTime.
func (x *e2e) floodRedirect(n, workers int, minTime time.Duration) floodResult {
	res := floodResult{byStatus: map[int]int{}}
	var mu sync.Mutex
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				code := madeUpCode(i)
				resp, err := x.client.Get(x.events + "/?" + url.Values{"authorization_code": {code}, "expires_in": {"3600"}}.Encode())
				mu.Lock()
				if err != nil {
					res.errors++
				} else {
					res.byStatus[resp.StatusCode]++
					if notACode(i) {
						res.malformed++
					}
				}
				mu.Unlock()
				if err == nil {
					_, _ = bufio.NewReader(resp.Body).WriteTo(new(bytes.Buffer))
					resp.Body.Close()
				}
			}
		}()
	}
	until := time.Now().Add(minTime)
	for i := 0; i < n || time.Now().Before(until); i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	res.total = 0
	for _, c := range res.byStatus {
		res.total += c
	}
	return res
}

// refusals reads caddy_tptoken_events_refused_total of the e2e component from
// the admin endpoint's /metrics, by "kind/reason".
func (x *e2e) refusals() map[string]float64 {
	x.t.Helper()
	a := adminCall(x.t, x.admin, http.MethodGet, "/metrics", "")
	if a.Status != 200 {
		x.t.Fatalf("/metrics: %d", a.Status)
	}
	out := map[string]float64{}
	prefix := `caddy_tptoken_events_refused_total{component_appid="` + e2eComponent + `",kind="`
	for _, line := range strings.Split(a.Body, "\n") {
		rest, ok := strings.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		kind, rest, _ := strings.Cut(rest, `",reason="`)
		reason, val, _ := strings.Cut(rest, `"} `)
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			x.t.Fatalf("metrics line %q", line)
		}
		out[kind+"/"+reason] = v
	}
	return out
}

func sumDelta(after, before map[string]float64, kind string) float64 {
	var n float64
	for k, v := range after {
		if strings.HasPrefix(k, kind+"/") {
			n += v - before[k]
		}
	}
	return n
}

// logLines returns the log file's lines from byte offset on, and the new offset.
func (x *e2e) logLines(from int) ([]string, int) {
	x.t.Helper()
	b, err := os.ReadFile(x.logFile)
	if err != nil {
		x.t.Fatal(err)
	}
	if from > len(b) {
		from = len(b)
	}
	text := strings.TrimRight(string(b[from:]), "\n")
	if text == "" {
		return nil, len(b)
	}
	return strings.Split(text, "\n"), len(b)
}

func TestRedirectFloodCostsAtMostTheBudgetAndRefreshesDoNotWaitBehindIt(t *testing.T) {
	const (
		burst   = 3 // exchanges per window: smaller than what 2 slots get through during the flood
		window  = time.Hour
		slots   = 2
		flood   = 3000
		workers = 64
	)
	// One call slot for refreshes: sharing it with made-up exchanges (1 s each)
	// would make every refresh wait behind one.
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin(), withGlobal(fmt.Sprintf(
		"max_concurrent_calls 1\n\t\tredirect_exchanges %d %s\n\t\tredirect_calls %d", burst, window, slots)))
	x.authorize("tt01app", "tt02app")
	if err := x.emu.SetFaults(emulator.OpExchange, emulator.Faults{Latency: time.Second}); err != nil {
		t.Fatal(err)
	}
	pw := newPlatformWatch()
	x.tap.setObserver(pw.observe)
	defer x.tap.setObserver(nil)

	t0 := time.Now()
	x.adminJSON(http.MethodPost, "/tptoken/authorizers/tt01app/refresh", "", http.StatusOK, nil)
	quiet := time.Since(t0)

	legit, err := x.emu.Authorize("tt03app", false) // a merchant authorizing during the flood
	if err != nil {
		t.Fatal(err)
	}
	before, refusedBefore := x.emu.Stats(), x.refusals()
	_, logFrom := x.logLines(0)
	start := time.Now()
	floodDone := make(chan floodResult, 1)
	go func() { floodDone <- x.floodRedirect(flood, workers, 5*time.Second) }()

	// A refresh while made-up exchanges are in flight at the platform.
	waitUntil(t, 20*time.Second, "an exchange of a made-up code in flight", func() bool { return pw.now(emulator.OpExchange) > 0 })
	t1 := time.Now()
	x.adminJSON(http.MethodPost, "/tptoken/authorizers/tt02app/refresh", "", http.StatusOK, nil)
	during := time.Since(t1)
	pw.mu.Lock()
	atRefresh := pw.exchangesAtRefresh[len(pw.exchangesAtRefresh)-1]
	pw.mu.Unlock()

	// A merchant's redirect during the flood: completed, or a clear "try again".
	q := url.Values{"authorization_code": {legit}, "expires_in": {"3600"}}.Encode()
	status, hdr, page := x.getEvents(q)
	legitDuring := status
	switch {
	case status == http.StatusOK && strings.Contains(page, "tt03app"):
	case status == http.StatusServiceUnavailable && hdr.Get("Retry-After") != "" && strings.Contains(page, "try again") &&
		strings.Contains(page, "it is not lost"):
	default:
		t.Fatalf("the merchant's redirect during the flood: %d %v\n%s", status, hdr, page)
	}

	res := <-floodDone
	elapsed := time.Since(start)
	after := x.emu.Stats()
	refusedAfter := x.refusals()
	lines, _ := x.logLines(logFrom)

	calls := after.Calls[emulator.OpExchange] - before.Calls[emulator.OpExchange]
	budget := int64(burst) + int64(elapsed/(window/burst)) + 1
	t.Logf("flood: %d redirects (%d malformed) in %s, answers %v; platform exchange calls %d (budget %d), at most %d in flight",
		res.total, res.malformed, elapsed.Round(time.Millisecond), res.byStatus, calls, budget, pw.most[emulator.OpExchange])
	t.Logf("forced refresh: %s without the flood, %s during it (%d made-up exchanges in flight when it reached the platform)",
		quiet.Round(time.Millisecond), during.Round(time.Millisecond), atRefresh)
	if res.errors > 0 {
		t.Fatalf("%d flood requests failed at the HTTP level", res.errors)
	}
	if res.byStatus[http.StatusOK] != 0 {
		t.Fatalf("made-up codes were accepted: %v", res.byStatus)
	}
	if calls < 1 || calls > budget {
		t.Fatalf("the flood caused %d platform exchange calls; budget %d", calls, budget)
	}
	if m := pw.most[emulator.OpExchange]; m > slots {
		t.Fatalf("%d exchanges in flight at once; redirect_calls is %d", m, slots)
	}
	if atRefresh < 1 {
		t.Fatalf("the refresh reached the platform only when no made-up exchange was in flight: it waited for a call slot")
	}

	// Every refusal is counted, with its reason.
	refused := sumDelta(refusedAfter, refusedBefore, kindRedirect)
	wantRefused := float64(res.total)
	if legitDuring != http.StatusOK {
		wantRefused++
	}
	if refused != wantRefused {
		t.Errorf("refused redirects counted %v, want %v (%v)", refused, wantRefused, refusedAfter)
	}
	if got := refusedAfter["redirect/malformed_code"] - refusedBefore["redirect/malformed_code"]; got != float64(res.malformed) {
		t.Errorf("malformed codes counted %v, sent %d", got, res.malformed)
	}

	// Log lines are sampled: a few per reason, not one per request.
	perThousand := float64(len(lines)) * 1000 / refused
	t.Logf("log lines during the flood: %d for %v refused requests (%.1f per 1,000)", len(lines), refused, perThousand)
	if perThousand > 20 {
		t.Fatalf("%d log lines for %v refused redirects:\n%s", len(lines), refused, strings.Join(lines[:min(len(lines), 40)], "\n"))
	}
	x.assertNoSecretIn("the log", x.debugLog())

	// The platform's AUTHORIZED push completes the merchant's authorization
	// whatever the budget; reloading the page then shows it, from the code index.
	if legitDuring != http.StatusOK {
		if status, body := x.postPush(seal(t, e2eComponent, authorizedPayload("tt03app", legit))); status != 200 || body != "success" {
			t.Fatalf("the AUTHORIZED push of tt03app: %d %q", status, body)
		}
	}
	n := x.emu.Stats().Calls[emulator.OpExchange]
	if status, _, page = x.getEvents(q); status != http.StatusOK || !strings.Contains(page, "tt03app") {
		t.Fatalf("the merchant's page reloaded after the flood: %d\n%s", status, page)
	}
	if got := x.emu.Stats().Calls[emulator.OpExchange]; got != n {
		t.Fatalf("the reload made %d exchange calls", got-n)
	}
	for _, id := range []string{"tt01app", "tt02app", "tt03app"} {
		if a := x.call("GET", x.apiPath(), appidHeader(id), ""); a.Status != 200 || a.Data.AppID != id {
			t.Fatalf("%s after the flood: %+v", id, a)
		}
	}
}

func TestReplayedAndStalePushesAreRefusedAndTheTenantStaysServed(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin())
	now := time.Now()
	served := func(appid string) bool {
		a := x.call("GET", x.apiPath(), appidHeader(appid), "")
		return a.Status == 200 && a.Data.AppID == appid
	}
	send := func(what string, body []byte, wantStatus int, wantBody string) {
		t.Helper()
		status, got := x.postPush(body)
		if status != wantStatus || (wantBody != "" && got != wantBody) {
			t.Fatalf("%s: %d %q, want %d %q", what, status, got, wantStatus, wantBody)
		}
	}
	reauthorize := map[string]func(appid, code string){
		"tt01app": func(_, code string) { // through the authorization redirect
			if status, _, page := x.getEvents(url.Values{"authorization_code": {code}}.Encode()); status != 200 {
				t.Fatalf("redirect: %d %s", status, page)
			}
		},
		"tt02app": func(appid, code string) { // through the admin API
			x.adminJSON(http.MethodPost, "/tptoken/authorizers/"+appid+"/code", `{"authorization_code":"`+code+`"}`, 200, nil)
		},
	}
	for _, appid := range []string{"tt01app", "tt02app"} {
		code, err := x.emu.Authorize(appid, false)
		if err != nil {
			t.Fatal(err)
		}
		auth := authorizedPayload(appid, code)
		auth.EventTime = push.FormatTime(now.Add(-30 * time.Second))
		send(appid+": AUTHORIZED", sealAt(t, e2eComponent, auth, now), 200, "success")

		// The merchant revokes the authorization; the push is captured on its way.
		if err := x.emu.Unauthorize(appid, false); err != nil {
			t.Fatal(err)
		}
		revoke := pushPayload{AppID: appid, TpAppID: e2eComponent, Event: "UNAUTHORIZED",
			EventTime: push.FormatTime(now.Add(-20 * time.Second))}
		captured := sealAt(t, e2eComponent, revoke, now)
		send(appid+": UNAUTHORIZED", captured, 200, "success")
		if served(appid) {
			t.Fatalf("%s served after UNAUTHORIZED", appid)
		}

		// ...and authorizes again.
		code, err = x.emu.Authorize(appid, false)
		if err != nil {
			t.Fatal(err)
		}
		reauthorize[appid](appid, code)
		if !served(appid) {
			t.Fatalf("%s not served after authorizing again", appid)
		}

		// The captured push, replayed: acknowledged as handled, not acted on.
		send(appid+": the captured UNAUTHORIZED replayed", captured, 200, "success")
		if !served(appid) {
			t.Fatalf("%s: replaying the captured UNAUTHORIZED revoked the new authorization", appid)
		}
		// The same revocation delivered anew (a late platform retry): older than
		// the re-authorization, so it does not revoke it either.
		send(appid+": the old UNAUTHORIZED, newly signed", sealAt(t, e2eComponent, revoke, now), 200, "success")
		if !served(appid) {
			t.Fatalf("%s: an UNAUTHORIZED older than the re-authorization revoked it", appid)
		}
	}

	// Pushes stamped outside the window are refused and change nothing.
	code, err := x.emu.Authorize("tt03app", false)
	if err != nil {
		t.Fatal(err)
	}
	stored, calls := x.stored(), totalCalls(x.emu.Stats())
	old := time.Date(2020, 5, 1, 10, 0, 0, 0, time.UTC)
	stale := map[string][]byte{
		"UNAUTHORIZED of 2020": sealAt(t, e2eComponent, pushPayload{AppID: "tt01app", TpAppID: e2eComponent, Event: "UNAUTHORIZED",
			EventTime: push.FormatTime(old)}, old),
		"AUTHORIZED of 2020":         sealAt(t, e2eComponent, authorizedPayload("tt03app", code), old),
		"AUTHORIZED stamped +1 hour": sealAt(t, e2eComponent, authorizedPayload("tt03app", code), now.Add(time.Hour)),
	}
	for what, body := range stale {
		for range 2 {
			status, got := x.postPush(body)
			if status != http.StatusForbidden || !strings.Contains(got, "TimeStamp") {
				t.Fatalf("%s: %d %q, want 403 naming the TimeStamp", what, status, got)
			}
		}
	}
	if after := x.stored(); !maps.EqualFunc(stored, after, bytes.Equal) {
		t.Fatalf("stale pushes changed storage:\nbefore %v\nafter  %v", slicesOfKeys(stored), slicesOfKeys(after))
	}
	if n := totalCalls(x.emu.Stats()); n != calls {
		t.Fatalf("stale pushes made %d platform calls", n-calls)
	}
	for _, appid := range []string{"tt01app", "tt02app"} {
		if !served(appid) {
			t.Fatalf("%s not served after the stale pushes", appid)
		}
	}
	if a := x.call("GET", x.apiPath(), appidHeader("tt03app"), ""); a.Status != 403 || a.TPToken.Error != "unknown_authorizer" {
		t.Fatalf("tt03app after stale AUTHORIZED pushes: %+v", a)
	}
	refused := x.refusals()
	if refused["push/stale"] < 6 || refused["push/duplicate"] < 2 {
		t.Fatalf("stale and duplicate pushes not counted: %v", refused)
	}
	x.assertNoSecretIn("the log", x.debugLog())
}

func TestAuthLinkRedirectsAreExchangedAndWithRequireStateNothingElse(t *testing.T) {
	x := newE2E(t, tokensource.V2, emulator.Lifetimes{}, withAdmin(), withEvents("require_state"))
	calls := func() int64 { return totalCalls(x.emu.Stats()) }

	// A link from `caddy tptoken auth-link`: pre_auth_code and a hand-built link.
	out, err := x.cli("auth-link", "--redirect-uri", x.events+"/authorized", "--json")
	if err != nil {
		t.Fatalf("auth-link: %v\n%s", err, out)
	}
	var ans authLinkAnswer
	if err := json.Unmarshal([]byte(out), &ans); err != nil {
		t.Fatalf("auth-link --json: %v\n%s", err, out)
	}
	if !strings.HasPrefix(ans.Link, x.emuURL+tokensource.AuthorizationPage+"?") || ans.Method != "pre_auth_code" ||
		!strings.HasPrefix(ans.RedirectURI, x.events+"/authorized/ts1.") || ans.StateExpiresAt.Before(ans.ExpiresAt) {
		t.Fatalf("auth-link answer: %+v", ans)
	}
	if x.emu.Stats().Calls[emulator.OpPreAuthCode] != 1 {
		t.Fatalf("pre_auth_code calls: %v", x.emu.Stats().Calls)
	}
	text, err := x.cli("auth-link", "--redirect-uri", x.events+"/")
	if err != nil || !strings.Contains(text, tokensource.AuthorizationPage) || !strings.Contains(text, "state valid until") {
		t.Fatalf("auth-link: %v\n%s", err, text)
	}

	// The merchant authorizes through the link; no push comes: the redirect alone completes it.
	to, err := x.emu.FollowAuthLink(ans.Link, "tt01app", false)
	if err != nil || !strings.HasPrefix(to, ans.RedirectURI+"?") {
		t.Fatalf("following the link: %q %v", to, err)
	}
	getURL := func(u string) (int, string) {
		t.Helper()
		resp, err := x.client.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}
	if status, page := getURL(to); status != 200 || !strings.Contains(page, "tt01app") {
		t.Fatalf("the link's redirect: %d %s", status, page)
	}
	if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 || a.Data.AppID != "tt01app" {
		t.Fatalf("tt01app after its redirect: %+v", a)
	}

	// A gen_link link, with the state in the query.
	x.adminJSON(http.MethodPost, "/tptoken/auth-link", `{"redirect_uri":"`+x.events+`/","method":"gen_link","state":"query"}`, 200, &ans)
	to, err = x.emu.FollowAuthLink(ans.Link, "tt02app", false)
	if err != nil || !strings.Contains(to, StateParam+"=ts1.") {
		t.Fatalf("following the gen_link link: %q %v", to, err)
	}
	if status, page := getURL(to); status != 200 || !strings.Contains(page, "tt02app") {
		t.Fatalf("the gen_link redirect: %d %s", status, page)
	}

	// Everything else is refused without a platform call.
	code, err := x.emu.Authorize("tt03app", false)
	if err != nil {
		t.Fatal(err)
	}
	n, refusedBefore := calls(), x.refusals()
	other := newStateSigner("another-secret", e2eComponent)
	expired := newStateSigner(e2eSecret, e2eComponent).sign(time.Now().Add(-time.Minute))
	for what, u := range map[string]string{
		"no state":               x.events + "/?authorization_code=" + code,
		"a forged state":         x.events + "/ts1." + strings.Repeat("A", 43) + "?authorization_code=" + code,
		"another TP's state":     x.events + "/" + other.sign(time.Now().Add(time.Hour)) + "?authorization_code=" + code,
		"an expired state":       x.events + "/?" + StateParam + "=" + expired + "&authorization_code=" + code,
		"a state that is no ts1": x.events + "/?" + StateParam + "=hello&authorization_code=" + code,
	} {
		status, page := getURL(u)
		if status != http.StatusForbidden || !strings.Contains(page, "not completed") || !strings.Contains(page, "it is not lost") {
			t.Errorf("%s: %d %s", what, status, page)
		}
		x.assertNoSecretIn(what, page)
	}
	if got := calls(); got != n {
		t.Fatalf("refused redirects made %d platform calls", got-n)
	}
	refused := x.refusals()
	if refused["redirect/no_state"]-refusedBefore["redirect/no_state"] != 1 || refused["redirect/bad_state"]-refusedBefore["redirect/bad_state"] != 4 {
		t.Fatalf("refused redirects counted: %v", refused)
	}
	// Pushes do not need a state.
	x.authorize("tt03app")
	if a := x.call("GET", x.apiPath(), appidHeader("tt03app"), ""); a.Status != 200 || a.Data.AppID != "tt03app" {
		t.Fatalf("tt03app after its push: %+v", a)
	}

	// Bad requests for a link.
	x.adminError(http.MethodPost, "/tptoken/auth-link", `{}`, http.StatusBadRequest, "redirect_uri")
	x.adminError(http.MethodPost, "/tptoken/auth-link", `{"redirect_uri":"`+x.events+`/","link_type":2}`, http.StatusBadRequest, "app_name")
	x.adminError(http.MethodPost, "/tptoken/auth-link", `{"redirect_uri":"ftp://x/"}`, http.StatusBadRequest, "redirect_uri")
	x.adminError(http.MethodPost, "/tptoken/auth-link", `{"redirect_uri":"`+x.events+`/","method":"mail"}`, http.StatusBadRequest, "method")
	x.adminError(http.MethodPost, "/tptoken/auth-link", `{"redirect_uri":"`+x.events+`/","state":"cookie"}`, http.StatusBadRequest, "state")
	x.adminError(http.MethodGet, "/tptoken/auth-link", ``, http.StatusMethodNotAllowed, "POST")
	x.assertNoSecretIn("the log", x.debugLog())
}
