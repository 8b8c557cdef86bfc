package tokensource_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

// rebuildLog keeps the events of a rebuild.
type rebuildLog struct {
	mu     sync.Mutex
	events []tokensource.RebuildEvent
}

func (l *rebuildLog) add(ev tokensource.RebuildEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, ev)
}

// results maps each appid to its result event.
func (l *rebuildLog) results() map[string]tokensource.RebuildEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := map[string]tokensource.RebuildEvent{}
	for _, ev := range l.events {
		if ev.Event == "result" {
			m[ev.AppID+ev.Fingerprint] = ev
		}
	}
	return m
}

// rebuild runs a rebuild on e and returns its summary and result events.
func rebuild(t *testing.T, e *tokensource.Engine, o tokensource.RebuildOptions) (tokensource.RebuildEvent, map[string]tokensource.RebuildEvent) {
	t.Helper()
	var l rebuildLog
	o.Progress = l.add
	if o.Rate == 0 {
		o.Rate = 10
	}
	sum, err := e.Rebuild(context.Background(), o)
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	return sum, l.results()
}

// editRecord rewrites the stored JSON of appid's record (records are plain
// JSON without an encryption key).
func (h *harness) editRecord(appid string, edit func(m map[string]any)) {
	h.t.Helper()
	b, err := os.ReadFile(h.recordFile(appid))
	if err != nil {
		h.t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		h.t.Fatal(err)
	}
	edit(m)
	if b, err = json.Marshal(m); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(h.recordFile(appid), b, 0o600); err != nil {
		h.t.Fatal(err)
	}
}

// receivePushes points the emulator's pushes at e, as the platform pushes to
// the 授权事件接收 URL, and returns how many it handled.
func (h *harness) receivePushes(e *tokensource.Engine) func() int {
	h.t.Helper()
	crypto, err := push.NewCrypto(testMsgToken, testAESKey, testComponent)
	if err != nil {
		h.t.Fatal(err)
	}
	var mu sync.Mutex
	handled := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		m, err := crypto.Open(b)
		if err == nil {
			_, err = e.HandlePush(r.Context(), m)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		mu.Lock()
		handled++
		mu.Unlock()
		_, _ = io.WriteString(w, "success")
	}))
	h.t.Cleanup(srv.Close)
	if err := h.emu.SetPushURL(srv.URL); err != nil {
		h.t.Fatal(err)
	}
	return func() int { mu.Lock(); defer mu.Unlock(); return handled }
}

// Every state a record can be in, as the rebuild's table says, and a second
// run that changes nothing.
func TestRebuildClassifiesEveryRecordState(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		obs := &recordingObserver{}
		e := h.engine(func(c *tokensource.Config) { c.Observer = obs })
		other := tokensource.V2
		if h.family == tokensource.V2 {
			other = tokensource.V1
		}
		// tt01missing: authorized, never exchanged here (its push was lost).
		if _, err := h.emu.Authorize("tt01missing", false); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"tt02active", "tt03corrupt", "tt04recovery", "tt05unauth", "tt06family", "tt07expired", "tt08gone", "tt09sealed"} {
			if id == "tt09sealed" {
				h.authorize(h.engine(func(c *tokensource.Config) { c.EncryptionKey = []byte("0123456789abcdef0123456789abcdef") }), id)
				continue
			}
			h.authorize(e, id)
		}
		if err := os.WriteFile(h.recordFile("tt03corrupt"), []byte(`{"v":1,"appid":`), 0o600); err != nil {
			t.Fatal(err)
		}
		h.editRecord("tt04recovery", func(m map[string]any) { m["state"] = "needs_recovery"; delete(m, "refresh_token") })
		h.editRecord("tt05unauth", func(m map[string]any) { m["state"] = "unauthorized"; delete(m, "refresh_token") }) // a stale mark
		h.editRecord("tt06family", func(m map[string]any) { m["family"] = string(other) })
		h.editRecord("tt07expired", func(m map[string]any) { m["refresh_expiry"] = h.clock.Now().Add(-time.Hour) })
		if err := h.emu.Unauthorize("tt08gone", false); err != nil { // not listed any more; its record stays
			t.Fatal(err)
		}
		handled := h.receivePushes(e)
		before := h.emu.Stats()

		sum, res := rebuild(t, e, tokensource.RebuildOptions{})
		want := map[string]string{
			"tt01missing":  tokensource.RebuildRebuilt,
			"tt02active":   tokensource.RebuildUnchanged,
			"tt03corrupt":  tokensource.RebuildRebuilt,
			"tt04recovery": tokensource.RebuildRebuilt,
			"tt05unauth":   tokensource.RebuildRebuilt,
			"tt06family":   tokensource.RebuildSkippedFamily,
			"tt07expired":  tokensource.RebuildRebuilt,
			"tt09sealed":   tokensource.RebuildSkippedUnreadable,
		}
		for id, r := range want {
			if res[id].Result != r {
				t.Errorf("%s: %s (%s), want %s", id, res[id].Result, res[id].Detail, r)
			}
		}
		if len(res) != len(want) {
			t.Errorf("%d results, want %d: %v", len(res), len(want), res)
		}
		if sum.Listed != 8 || sum.PlatformTotal != 8 || sum.NotListedTotal != 1 || len(sum.NotListed) != 1 || sum.NotListed[0] != "tt08gone" {
			t.Errorf("summary %+v: want 8 listed and tt08gone not listed", sum)
		}
		if sum.Counts[tokensource.RebuildRebuilt] != 5 {
			t.Errorf("counts %v", sum.Counts)
		}
		st := h.emu.Stats()
		for id, r := range want {
			d := st.App(id).Exchanges - before.App(id).Exchanges
			if r == tokensource.RebuildRebuilt && d != 1 || r != tokensource.RebuildRebuilt && d != 0 {
				t.Errorf("%s (%s): %d exchanges", id, r, d)
			}
			if r == tokensource.RebuildRebuilt {
				info, err := e.Info(context.Background(), id)
				if err != nil || info.State != tokensource.StateActive {
					t.Errorf("%s after the rebuild: %+v, %v", id, info, err)
				}
				tok, err := e.Token(context.Background(), id)
				if err != nil {
					t.Fatalf("%s: %v", id, err)
				}
				if owner, code := h.downstream(tok); code != 0 || owner != id {
					t.Errorf("%s serves a token of %q (code %d)", id, owner, code)
				}
			}
		}
		if st.Total.Refresh40021 != 0 {
			t.Errorf("%d refreshes refused with 40021", st.Total.Refresh40021)
		}
		if !logged(h, "rebuild overwrites a damaged record") {
			t.Error("overwriting the damaged record was not logged")
		}
		// The UPDATE_AUTHORIZED push of each retrieved code reaches the engine,
		// which finds the code exchanged already: no second exchange.
		eventually(t, "the 5 UPDATE_AUTHORIZED pushes", func() bool { return handled() >= 5 })
		if got := h.emu.Stats().Total.Exchanges - before.Total.Exchanges; got != 5 {
			t.Errorf("%d exchanges after the pushes, want 5", got)
		}

		// Second run: nothing to do, no retrieve, no exchange.
		before = h.emu.Stats()
		_, res2 := rebuild(t, e, tokensource.RebuildOptions{})
		after := h.emu.Stats()
		for id, ev := range res2 {
			if w := want[id]; w == tokensource.RebuildRebuilt && ev.Result != tokensource.RebuildUnchanged || w != tokensource.RebuildRebuilt && ev.Result != w {
				t.Errorf("second run: %s %s", id, ev.Result)
			}
		}
		if d := after.Calls[emulator.OpRetrieve] + after.Calls[emulator.OpExchange] + after.Calls[emulator.OpRefresh] -
			before.Calls[emulator.OpRetrieve] - before.Calls[emulator.OpExchange] - before.Calls[emulator.OpRefresh]; d != 0 {
			t.Errorf("the second run made %d token calls", d)
		}
		if got := after.Calls[emulator.OpAppList] - before.Calls[emulator.OpAppList]; got != 1 {
			t.Errorf("the second run read %d list pages, want 1", got)
		}

		// The key of the sealed record is lost for good: rebuild over it.
		_, res3 := rebuild(t, e, tokensource.RebuildOptions{OverwriteUnreadable: true})
		if r := res3["tt09sealed"]; r.Result != tokensource.RebuildRebuilt || !strings.Contains(r.Detail, "overwrite_unreadable") {
			t.Errorf("with OverwriteUnreadable: %+v", r)
		}
		obs.mu.Lock()
		reported := strings.Join(obs.rebuilds, "\n")
		obs.mu.Unlock()
		if !strings.Contains(reported, "operator rebuilt") || !strings.Contains(reported, "operator done:failed") ||
			!strings.Contains(reported, "operator done:ok") {
			t.Errorf("observer got:\n%s", reported)
		}
		h.assertNoSecretsLogged()
	})
}

// An authorizer listed, then revoked before its retrieve: the platform
// answers 40022, and a record marked unauthorized stays as it is.
func TestRebuildOfAnAuthorizationRevokedMeanwhileWritesNothing(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	// The platform revokes tt01late between the list and the retrieve.
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == emulator.PathV1Retrieve && r.URL.Query().Get("authorization_appid") == "tt01late" {
			_ = h.emu.Unauthorize("tt01late", false)
		}
		h.emu.ServeHTTP(w, r)
	}))
	t.Cleanup(hook.Close)
	e := h.engine(func(c *tokensource.Config) { c.Endpoint = hook.URL })
	h.authorize(e, "tt01late")
	h.editRecord("tt01late", func(m map[string]any) { m["state"] = "unauthorized"; delete(m, "refresh_token") })
	stored, _ := os.ReadFile(h.recordFile("tt01late"))
	if _, err := h.emu.Authorize("tt02new", false); err != nil {
		t.Fatal(err)
	}
	_, res := rebuild(t, e, tokensource.RebuildOptions{})
	if r := res["tt01late"]; r.Result != tokensource.RebuildNotAuthorized {
		t.Fatalf("tt01late: %+v", r)
	}
	if now, _ := os.ReadFile(h.recordFile("tt01late")); string(now) != string(stored) {
		t.Fatal("the unauthorized record was rewritten")
	}
	if r := res["tt02new"]; r.Result != tokensource.RebuildRebuilt {
		t.Fatalf("tt02new: %+v", r)
	}
}

// Two instances rebuild the same lost storage at once: each authorizer is
// retrieved and exchanged once, by one of them; the other finds its record.
func TestTwoEnginesRebuildingAtOnceExchangeEachAuthorizerOnce(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		var ids []string
		for i := range 24 {
			id := fmt.Sprintf("tt%02dboth", i)
			ids = append(ids, id)
			if _, err := h.emu.Authorize(id, false); err != nil {
				t.Fatal(err)
			}
		}
		e1, e2 := h.engine(), h.engine()
		var wg sync.WaitGroup
		var sums [2]tokensource.RebuildEvent
		for i, e := range []*tokensource.Engine{e1, e2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sum, err := e.Rebuild(context.Background(), tokensource.RebuildOptions{Rate: 10})
				if err != nil {
					t.Error(err)
				}
				sums[i] = sum
			}()
		}
		wg.Wait()
		st := h.emu.Stats()
		for _, id := range ids {
			if c := st.App(id); c.Exchanges != 1 || c.Retrieves != 1 || c.Refresh40021 != 0 {
				t.Errorf("%s: %+v, want exactly one retrieve and one exchange", id, c)
			}
		}
		rebuilt := sums[0].Counts[tokensource.RebuildRebuilt] + sums[1].Counts[tokensource.RebuildRebuilt]
		unchanged := sums[0].Counts[tokensource.RebuildUnchanged] + sums[1].Counts[tokensource.RebuildUnchanged]
		if rebuilt != len(ids) || unchanged != len(ids) {
			t.Errorf("rebuilt %d, unchanged %d across the two runs (counts %v, %v): want %d each", rebuilt, unchanged, sums[0].Counts, sums[1].Counts, len(ids))
		}
		for _, id := range ids {
			tok, err := e2.Token(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			if owner, code := h.downstream(tok); code != 0 || owner != id {
				t.Fatalf("%s serves a dead token (code %d)", id, code)
			}
		}
	})
}

// The exchange's answer is lost (it took effect): the run reports the
// authorizer failed, and a rerun retrieves a new code and rebuilds it.
func TestRebuildAfterALostExchangeAnswerSucceedsOnRerun(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e := h.engine()
	for _, id := range []string{"tt01lost", "tt02fine"} {
		if _, err := h.emu.Authorize(id, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.emu.SetFaults(emulator.OpExchange, emulator.Faults{DropResponse: 1, AppID: "tt01lost"}); err != nil {
		t.Fatal(err)
	}
	sum, res := rebuild(t, e, tokensource.RebuildOptions{})
	if r := res["tt01lost"]; r.Result != tokensource.RebuildFailed || !strings.Contains(r.Detail, "rerun") {
		t.Fatalf("tt01lost: %+v", r)
	}
	if res["tt02fine"].Result != tokensource.RebuildRebuilt || sum.Counts[tokensource.RebuildFailed] != 1 {
		t.Fatalf("summary %+v", sum)
	}
	if _, err := os.Stat(h.recordFile("tt01lost")); !os.IsNotExist(err) {
		t.Fatalf("a failed rebuild stored a record: %v", err)
	}
	_, res = rebuild(t, e, tokensource.RebuildOptions{})
	if r := res["tt01lost"]; r.Result != tokensource.RebuildRebuilt {
		t.Fatalf("rerun: %+v", r)
	}
	if res["tt02fine"].Result != tokensource.RebuildUnchanged {
		t.Fatalf("rerun touched tt02fine: %+v", res["tt02fine"])
	}
	tok, err := e.Token(context.Background(), "tt01lost")
	if err != nil {
		t.Fatal(err)
	}
	if _, code := h.downstream(tok); code != 0 {
		t.Fatalf("the rebuilt token does not work (code %d)", code)
	}
}

// A run cancelled half-way leaves each authorizer done or untouched, and
// says how many were not attempted; the rerun does the rest, exchanging none
// twice.
func TestRebuildInterruptedAndRerunExchangesNoneTwice(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	e := h.engine()
	var ids []string
	for i := range 12 {
		id := fmt.Sprintf("tt%02dstop", i)
		ids = append(ids, id)
		if _, err := h.emu.Authorize(id, false); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	results := 0
	sum, err := e.Rebuild(ctx, tokensource.RebuildOptions{Rate: 10, Progress: func(ev tokensource.RebuildEvent) {
		if ev.Event == "result" {
			if results++; results == 4 {
				cancel()
			}
		}
	}})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	done := sum.Counts[tokensource.RebuildRebuilt]
	if !sum.Interrupted || done < 4 || done >= len(ids) || sum.NotAttempted != len(ids)-done-sum.Counts[tokensource.RebuildFailed] {
		t.Fatalf("interrupted run: %+v", sum)
	}
	sum2, _ := rebuild(t, e, tokensource.RebuildOptions{})
	if sum2.Interrupted || sum2.Counts[tokensource.RebuildRebuilt]+sum2.Counts[tokensource.RebuildUnchanged] != len(ids) {
		t.Fatalf("rerun: %+v", sum2)
	}
	st := h.emu.Stats()
	for _, id := range ids {
		if c := st.App(id); c.Exchanges != 1 {
			t.Errorf("%s exchanged %d times", id, c.Exchanges)
		}
	}
}

// A restored backup: refresh tokens spent. Verify refreshes each active
// record once: a live one is refreshed, a spent one recovered; a rerun
// within the same run's start does nothing twice.
func TestRebuildVerifyRefreshesLiveRecordsAndRecoversSpentOnes(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e := h.engine()
	h.authorize(e, "tt01live")
	h.authorize(e, "tt02spent")
	backup, err := os.ReadFile(h.recordFile("tt02spent"))
	if err != nil {
		t.Fatal(err)
	}
	h.expire()
	if _, err := e.Token(context.Background(), "tt02spent"); err != nil { // spends the backup's refresh token
		t.Fatal(err)
	}
	if err := os.WriteFile(h.recordFile("tt02spent"), backup, 0o600); err != nil {
		t.Fatal(err)
	}
	fresh := h.engine() // an instance started on the restored storage: nothing in memory
	_, res := rebuild(t, fresh, tokensource.RebuildOptions{Verify: true})
	if res["tt01live"].Result != tokensource.RebuildRefreshed || res["tt02spent"].Result != tokensource.RebuildRecovered {
		t.Fatalf("results %+v", res)
	}
	st := h.emu.Stats()
	if c := st.App("tt02spent"); c.Refresh40021 != 1 || c.Retrieves != 1 || c.Exchanges != 2 {
		t.Fatalf("tt02spent: %+v", c)
	}
	if c := st.App("tt01live"); c.Refresh40021 != 0 || c.Retrieves != 0 {
		t.Fatalf("tt01live: %+v", c)
	}
	for _, id := range []string{"tt01live", "tt02spent"} {
		tok, err := fresh.Token(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if _, code := h.downstream(tok); code != 0 {
			t.Fatalf("%s serves a dead token", id)
		}
	}
}

// Only the appids asked for are worked on; an appid the platform does not
// list is reported by its fingerprint, untouched.
func TestRebuildOfChosenAppIDsLeavesTheOthersAlone(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e := h.engine()
	for _, id := range []string{"tt01pick", "tt02leave"} {
		if _, err := h.emu.Authorize(id, false); err != nil {
			t.Fatal(err)
		}
	}
	_, res := rebuild(t, e, tokensource.RebuildOptions{AppIDs: []string{"tt01pick", "tt03unknown"}})
	if res["tt01pick"].Result != tokensource.RebuildRebuilt {
		t.Fatalf("tt01pick: %+v", res["tt01pick"])
	}
	if _, ok := res["tt02leave"]; ok {
		t.Fatal("an appid not asked for was worked on")
	}
	fp := tokensource.Secret("tt03unknown").Fingerprint()
	if r := res[fp]; r.Result != tokensource.RebuildNotListed || r.AppID != "" {
		t.Fatalf("unknown appid: %+v (its value must not be echoed)", r)
	}
	if c := h.emu.Stats().App("tt03unknown"); c.Retrieves != 0 {
		t.Fatal("an appid the platform does not list was sent to the platform")
	}
}

// The list is read page by page (50 a page) and each authorizer once.
func TestRebuildPagesThroughALongList(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	e := h.engine()
	var ids []string
	for i := range 120 {
		id := fmt.Sprintf("tt%03dpage", i)
		ids = append(ids, id)
		if i == 77 { // one to rebuild; the others are on record (no rate to wait for)
			if _, err := h.emu.Authorize(id, false); err != nil {
				t.Fatal(err)
			}
			continue
		}
		h.authorize(e, id)
	}
	sum, res := rebuild(t, e, tokensource.RebuildOptions{})
	if sum.Listed != 120 || sum.PlatformTotal != 120 || sum.Counts[tokensource.RebuildRebuilt] != 1 ||
		sum.Counts[tokensource.RebuildUnchanged] != 119 || sum.ListChanged {
		t.Fatalf("summary %+v", sum)
	}
	got := make([]string, 0, len(res))
	for id := range res {
		got = append(got, id)
	}
	sort.Strings(got)
	if strings.Join(got, ",") != strings.Join(ids, ",") {
		t.Fatal("not every listed authorizer got one result")
	}
	if n := h.emu.Stats().Calls[emulator.OpAppList]; n != 3 {
		t.Fatalf("%d list pages read for 120 authorizers, want 3", n)
	}
}

// Bad options are refused before anything is done; two runs at once on one
// engine are refused with KindBusy.
func TestRebuildRefusesBadOptionsAndASecondRun(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e := h.engine()
	for _, c := range []struct {
		o    tokensource.RebuildOptions
		kind tokensource.Kind
	}{{tokensource.RebuildOptions{Rate: -1}, tokensource.KindBadInput}, {tokensource.RebuildOptions{Rate: 11}, tokensource.KindBadInput},
		{tokensource.RebuildOptions{AppIDs: []string{"bad appid"}}, tokensource.KindBadAppID}} {
		if _, err := e.Rebuild(context.Background(), c.o); tokensource.KindOf(err) != c.kind {
			t.Errorf("%+v: %v, want %s", c.o, err, c.kind)
		}
	}
	if n := h.emu.Stats().Calls[emulator.OpAppList]; n != 0 {
		t.Fatalf("a refused run read the list (%d pages)", n)
	}
	if _, err := h.emu.Authorize("tt01slow", false); err != nil {
		t.Fatal(err)
	}
	if err := h.emu.SetFaults(emulator.OpRetrieve, emulator.Faults{Latency: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	var once sync.Once
	go func() {
		_, _ = e.Rebuild(context.Background(), tokensource.RebuildOptions{Progress: func(tokensource.RebuildEvent) { once.Do(func() { close(started) }) }})
	}()
	<-started
	_, err := e.Rebuild(context.Background(), tokensource.RebuildOptions{})
	if tokensource.KindOf(err) != tokensource.KindBusy || !strings.Contains(err.Error(), "is running") {
		t.Fatalf("a second run at once: %v", err)
	}
	if ci := e.ComponentInfo(context.Background()); ci.Rebuild == nil || ci.Rebuild.Trigger != tokensource.RebuildByOperator {
		t.Fatalf("ComponentInfo does not show the running rebuild: %+v", ci.Rebuild)
	}
	// Meanwhile an appid with no record may be about to get one: 503, not 403.
	_, err = e.Token(context.Background(), "tt09none")
	var ee *tokensource.Error
	if !errors.As(err, &ee) || ee.Kind != tokensource.KindUnavailable || ee.RetryAfter <= 0 {
		t.Fatalf("a missing record during a rebuild: %v, want unavailable with a Retry-After", err)
	}
}

// The list grows while it is read: it is read once more, the newcomer is
// rebuilt too, and the summary says the list changed.
func TestRebuildReadsAListThatChangedWhilePagingTwice(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	var once sync.Once
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == emulator.PathV1AppList && r.URL.Query().Get("page") == "2" {
			once.Do(func() { _, _ = h.emu.Authorize("tt999late", false) })
		}
		h.emu.ServeHTTP(w, r)
	}))
	t.Cleanup(hook.Close)
	e := h.engine(func(c *tokensource.Config) { c.Endpoint = hook.URL })
	for i := range 60 {
		h.authorize(e, fmt.Sprintf("tt%02dgrow", i))
	}
	sum, res := rebuild(t, e, tokensource.RebuildOptions{})
	if !sum.ListChanged || res["tt999late"].Result != tokensource.RebuildRebuilt || sum.Listed != 61 {
		t.Fatalf("summary %+v, late one %+v", sum, res["tt999late"])
	}
}
