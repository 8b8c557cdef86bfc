package tokensource_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// recordingObserver keeps what the engine reported about platform calls,
// recoveries and rebuilds.
type recordingObserver struct {
	mu         sync.Mutex
	calls      []string // op appid cause result
	recoveries []string // appid cause ok
	rebuilds   []string // trigger result (per authorizer) or trigger "done:"outcome
}

func (o *recordingObserver) Lookup(string, string) {}

func (o *recordingObserver) Rejection(string, string) {}

func (o *recordingObserver) GoneReport(string, string) {}

func (o *recordingObserver) RebuildResult(trigger, result string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.rebuilds = append(o.rebuilds, trigger+" "+result)
}

func (o *recordingObserver) RebuildDone(trigger, outcome string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.rebuilds = append(o.rebuilds, trigger+" done:"+outcome)
}

func (o *recordingObserver) PlatformCall(op, appid, cause, result string, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, strings.Join([]string{op, appid, cause, result}, " "))
}

func (o *recordingObserver) Recovery(appid, cause string, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := "failed"
	if ok {
		s = "ok"
	}
	o.recoveries = append(o.recoveries, strings.Join([]string{appid, cause, s}, " "))
}

func (o *recordingObserver) all() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.Join(append(append([]string(nil), o.calls...), o.recoveries...), "\n")
}

// logText is every captured log line with its fields, for substring checks.
func (h *harness) logText() string {
	var b strings.Builder
	for _, entry := range h.logs.All() {
		b.WriteString(entry.Message)
		enc := zapcore.NewMapObjectEncoder()
		for _, f := range entry.Context {
			f.AddTo(enc)
		}
		for k, v := range enc.Fields {
			b.WriteString(" " + k + "=" + toString(v))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// storedFiles is every file under the storage folder, by path relative to it.
func (h *harness) storedFiles() map[string]string {
	files := map[string]string{}
	_ = filepath.Walk(h.dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			b, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(h.dir, p)
			files[rel] = string(b)
		}
		return nil
	})
	return files
}

func kindOf(err error) tokensource.Kind { return tokensource.KindOf(err) }

// A legacy row with swapped columns: the "appid" is a refresh token that
// matches the appid pattern. Nothing may carry it: not the result, a log line,
// a metric label or a stored key.
// (v1 refresh tokens are hex: they pass the appid pattern.)
func TestImportKeepsAnUnconfirmedAppidOutOfResultsLogsLabelsAndStorage(t *testing.T) {
	func(t *testing.T, h *harness) {
		obs := &recordingObserver{}
		e := h.engine(func(c *tokensource.Config) { c.Observer = obs })
		// A legacy store's refresh token for tt32app: its own exchange.
		code, err := h.emu.Authorize("tt32app", false)
		if err != nil {
			t.Fatal(err)
		}
		client := mustClient(t, h)
		ct, err := client.ComponentToken(context.Background(), tokensource.Secret(h.emu.Ticket()))
		if err != nil {
			t.Fatal(err)
		}
		g, err := client.ExchangeCode(context.Background(), ct.Token, tokensource.Secret(code))
		if err != nil {
			t.Fatal(err)
		}
		rt := g.RefreshToken.Reveal()
		if !tokensource.ValidAppID(rt) {
			t.Fatalf("the emulator's v1 refresh tokens no longer match the appid pattern (%d chars): this test tests nothing", len(rt))
		}

		// Swapped: appid column holds the refresh token, token column the appid.
		res := e.Import(context.Background(), rt, tokensource.Secret("tt32app"), time.Time{})
		if res.Result != "failed" || res.AppID != "" || res.Fingerprint != tokensource.Secret(rt).Fingerprint() {
			t.Fatalf("swapped row = %+v", res)
		}
		if strings.Contains(res.Detail, rt) {
			t.Fatalf("the detail quotes the value: %s", res.Detail)
		}
		if logs := h.logText(); strings.Contains(logs, rt) {
			t.Fatalf("a log line holds the value of the appid column:\n%s", logs)
		}
		seen := obs.all()
		if strings.Contains(seen, rt) {
			t.Fatalf("a metric label holds the value of the appid column:\n%s", seen)
		}
		if !strings.Contains(seen, "refresh  import ") {
			t.Fatalf("the import's refresh was not reported with cause import and no appid:\n%s", seen)
		}
		for name := range h.storedFiles() {
			if strings.Contains(name, rt) {
				t.Fatalf("a stored key holds the value: %s", name)
			}
		}

		// The right way round: imported, the appid shown once the platform took the token.
		res = e.Import(context.Background(), "tt32app", tokensource.Secret(rt), time.Time{})
		if res.Result != "imported" || res.AppID != "tt32app" || res.Fingerprint != "" {
			t.Fatalf("row = %+v", res)
		}
		if seen := obs.all(); !strings.Contains(seen, "refresh tt32app import ok") {
			t.Fatalf("the import's refresh was not reported with its appid and cause import:\n%s", seen)
		}
		// Live traffic afterwards is cause live.
		h.expire()
		if _, err := e.Token(context.Background(), "tt32app"); err != nil {
			t.Fatal(err)
		}
		if seen := obs.all(); !strings.Contains(seen, "refresh tt32app live ok") {
			t.Fatalf("a request's refresh was not reported as live:\n%s", seen)
		}
		h.assertNoSecretsLogged()
	}(t, newHarness(t, tokensource.V1))
}

// Forced refreshes and recoveries share a budget per authorizer, kept in its
// record: it holds across instances.
func TestForcedOperationsAreBudgetedPerAuthorizerAcrossInstances(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	a, b := h.engine(), h.engine()
	h.authorize(a, "tt01app")
	ctx := context.Background()
	for i, e := range []*tokensource.Engine{a, b, a} {
		var err error
		if i == 2 {
			_, err = e.Recover(ctx, "tt01app", false)
		} else {
			_, err = e.Refresh(ctx, "tt01app")
		}
		if err != nil {
			t.Fatalf("forced operation %d: %v", i+1, err)
		}
		h.clock.Advance(time.Minute)
	}
	before := h.emu.Stats().App("tt01app")
	for _, e := range []*tokensource.Engine{b, a} {
		_, err := e.Refresh(ctx, "tt01app")
		var te *tokensource.Error
		if kindOf(err) != tokensource.KindRateLimited || !errors.As(err, &te) || te.RetryAfter != 7*time.Minute {
			t.Fatalf("fourth forced refresh: %v (retry after %v), want rate_limited after 7m", err, te)
		}
		if _, err := e.Recover(ctx, "tt01app", false); kindOf(err) != tokensource.KindRateLimited {
			t.Fatalf("fourth forced operation (recover): %v", err)
		}
	}
	if after := h.emu.Stats().App("tt01app"); after.Refreshes != before.Refreshes || after.Retrieves != before.Retrieves {
		t.Fatalf("refused forced operations reached the platform: %+v -> %+v", before, after)
	}
	// Requests are not budgeted: the token keeps serving and renewing.
	if _, err := b.Token(ctx, "tt01app"); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(7 * time.Minute)
	if _, err := b.Refresh(ctx, "tt01app"); err != nil {
		t.Fatalf("after the window: %v", err)
	}
}

func TestRecoverOfAnAppidWithNoRecordStoresNothingUnlessItWorks(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	e := h.engine()
	ctx := context.Background()
	before := h.storedFiles()

	_, err := e.Recover(ctx, "tt0typo", false)
	if kindOf(err) != tokensource.KindUnknownAuthorizer || !strings.Contains(err.Error(), "new") || strings.Contains(err.Error(), "tt0typo") {
		t.Fatalf("recover of an unknown appid: %v", err)
	}
	if s := h.emu.Stats().Total; s.Retrieves != 0 {
		t.Fatalf("refused recover called the platform: %+v", s)
	}
	// As new: the platform does not know it; nothing stored, not named in logs.
	_, err = e.Recover(ctx, "tt0typo", true)
	if err == nil || strings.Contains(err.Error(), "tt0typo") {
		t.Fatalf("recover --new of an appid the platform does not know: %v", err)
	}
	after := h.storedFiles()
	for name := range after {
		if _, ok := before[name]; !ok && !strings.Contains(name, "component_token") {
			t.Fatalf("a failed recovery stored %s", name)
		}
	}
	if logs := h.logText(); strings.Contains(logs, "tt0typo") {
		t.Fatalf("the unconfirmed appid was logged:\n%s", logs)
	}
	if _, err := e.Info(ctx, "tt0typo"); kindOf(err) != tokensource.KindUnknownAuthorizer {
		t.Fatalf("after failed recoveries: %v", err)
	}

	// An authorizer tptoken never recorded (authorized after a restored backup).
	if _, err := h.emu.Authorize("tt41app", false); err != nil {
		t.Fatal(err)
	}
	info, err := e.Recover(ctx, "tt41app", true)
	if err != nil || info.State != tokensource.StateActive {
		t.Fatalf("recover --new of an authorized appid: %+v %v", info, err)
	}
	tok, err := e.Token(ctx, "tt41app")
	if err != nil {
		t.Fatal(err)
	}
	if owner, code := h.downstream(tok); owner != "tt41app" || code != 0 {
		t.Fatalf("recovered token: owner %q code %d", owner, code)
	}
}

func mustClient(t *testing.T, h *harness) *tokensource.Client {
	c, err := tokensource.NewClient(tokensource.ClientConfig{Family: h.family, Endpoint: h.srv.URL,
		ComponentAppID: testComponent, ComponentSecret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
