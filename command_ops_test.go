package tptoken

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// runCLIWithInput is runCLI with standard input.
func runCLIWithInput(t *testing.T, in string, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "tptoken", SilenceErrors: true}
	configureCommand(root)
	var out strings.Builder
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetIn(strings.NewReader(in))
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// Scripts must be able to trust the exit status: a typo or an invalid value
// fails (status 1) and names what is valid, before anything is asked of Caddy.
func TestCLIFailsOnUnknownSubcommandsAndInvalidFlagValues(t *testing.T) {
	closed := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // nothing listens: no case may get that far
	cases := []struct {
		args    []string
		mention []string
	}{
		{[]string{"stauts"}, []string{`unknown subcommand "stauts"`, "status, import, refresh, recover, seed-code, delete, reseal", "did you mean status"}},
		{[]string{"frobnicate", "tt01app"}, []string{`unknown subcommand "frobnicate"`, "status"}},
		{[]string{}, []string{"a subcommand is required", "status"}},
		{[]string{"status", "--state", "broken"}, []string{`--state "broken"`, "active, needs_recovery, unauthorized"}},
		{[]string{"status", "--limit", "-1"}, []string{"--limit -1"}},
		{[]string{"status", "--max-ticket-age", "0s", "--check"}, []string{"--max-ticket-age"}},
		{[]string{"status", "tt01app", "--check"}, []string{"not to one appid"}},
		{[]string{"import", "x.csv", "--format", "yaml"}, []string{`--format "yaml"`, "json, csv"}},
		{[]string{"import", "x.csv", "--batch", "0"}, []string{"--batch 0", "1 to 1000"}},
		{[]string{"delete", "tt01app"}, []string{"--yes", "for good"}},
		{[]string{"refresh", "--component", "bad/comp", "tt01app"}, []string{"--component", "component appid"}},
		{[]string{"seed-code", "--appid", "bad.appid"}, []string{"--appid", "invalid appid"}},
		{[]string{"seed-code"}, []string{"no code on standard input"}},
		{[]string{"status", "--bogus"}, []string{"unknown flag: --bogus"}},
	}
	for _, c := range cases {
		out, err := runCLIWithInput(t, "", append(c.args, "--address", closed)...)
		if code := exitCodeOf(err); code != 1 {
			t.Errorf("caddy tptoken %s: exit status %d, want 1 (%v)\n%s", strings.Join(c.args, " "), code, err, out)
			continue
		}
		for _, m := range c.mention {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("caddy tptoken %s: error %q does not mention %q", strings.Join(c.args, " "), err, m)
			}
		}
		if strings.Contains(err.Error(), "cannot reach") {
			t.Errorf("caddy tptoken %s: contacted the admin API before checking its arguments: %v", strings.Join(c.args, " "), err)
		}
	}
}

// status --check exits 0 only when every component has a fresh ticket and a
// valid component token, and 2 otherwise; it lists no authorizer.
func TestCLIStatusCheckIsHealthyWithAFreshTicketAndAComponentToken(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin())
	x.authorize("tt01app") // the exchange fetched the component token
	if err := x.emu.Unauthorize("tt01app", true); err != nil {
		t.Fatal(err)
	}
	out, err := x.cli("status", "--check")
	if err != nil || !strings.Contains(out, "\nhealthy") || strings.Contains(out, "Authorizers of") {
		t.Fatalf("status --check (an unauthorized tenant is not the TP's problem): exit %d, %v\n%s", exitCodeOf(err), err, out)
	}
	out, err = x.cli("status", "--check", "--json")
	var st statusJSON
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.Health == nil || !st.Health.Healthy || st.Authorizers != nil {
		t.Fatalf("status --check --json: %v\n%s", err, out)
	}
	time.Sleep(10 * time.Millisecond) // the ticket is then older than 5ms
	out, err = x.cli("status", "--check", "--max-ticket-age", "5ms")
	if exitCodeOf(err) != 2 || !strings.Contains(out, "NOT HEALTHY") || !strings.Contains(out, "pushes are not arriving") ||
		!strings.Contains(err.Error(), "not healthy") {
		t.Fatalf("status --check with a stale ticket: exit %d, %v\n%s", exitCodeOf(err), err, out)
	}
	// Plain status still exits 0: it reports, it does not judge.
	if out, err := x.cli("status"); err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
}

// twoComponents is an e2e whose app has a second TP (with no platform behind
// it) next to the emulated one; the handler names the emulated one.
func twoComponents(t *testing.T) *e2e {
	t.Helper()
	return newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin(),
		withHandler("tptoken {\n\t\tcomponent "+e2eComponent+"\n\t}"),
		withGlobal("}\n\ttptoken {\n\t\tcomponent_appid tt00othertp\n\t\tcomponent_appsecret {env.TPT_SECRET}\n\t\tendpoint http://127.0.0.1:9\n"+
			"\t\tmessage_token {env.TPT_SECRET}\n\t\tencoding_aes_key abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"))
}

// With two TPs, an appid on record under one of them needs no --component;
// only a new authorizer (no record anywhere) or an appid on record under both
// needs it.
func TestCLIInfersTheComponentOfAnAppidAndAsksOnlyWhenAmbiguous(t *testing.T) {
	x := twoComponents(t)
	x.authorize("tt01app")

	out, err := x.cli("status", "tt01app")
	if err != nil || !strings.Contains(out, "tt01app") || !strings.Contains(out, "active") {
		t.Fatalf("status tt01app with two components: %v\n%s", err, out)
	}
	before := x.emu.Stats().App("tt01app").Refreshes
	out, err = x.cli("refresh", "tt01app")
	if err != nil || x.emu.Stats().App("tt01app").Refreshes != before+1 {
		t.Fatalf("refresh tt01app with two components: %v\n%s", err, out)
	}
	out, err = x.cli("refresh", "tt01app", "--component", "tt00othertp")
	if err == nil || !strings.Contains(out, "no record of this appid") || !strings.Contains(out, "under component tt00othertp") {
		t.Fatalf("refresh under the wrong component: %v\n%s", err, out)
	}

	// A new authorizer: no record anywhere, so the TP must be named.
	if _, err := x.emu.Authorize("tt02app", false); err != nil {
		t.Fatal(err)
	}
	out, err = x.cli("recover", "--new", "tt02app")
	if err == nil || !strings.Contains(out, "several components are configured") || !strings.Contains(out, "--component") {
		t.Fatalf("recover --new without --component: %v\n%s", err, out)
	}
	out, err = x.cli("recover", "--new", "tt02app", "--component", e2eComponent)
	if err != nil || !strings.Contains(out, "tt02app") || !strings.Contains(out, " ok ") {
		t.Fatalf("recover --new --component: %v\n%s", err, out)
	}
	if r := x.call("GET", x.apiPath(), appidHeader("tt02app"), ""); r.Status != 200 || r.Errno != 0 {
		t.Fatalf("tt02app after recover --new: %+v", r)
	}

	// An import without --component: rows of appids on record go to their
	// component; the others fail asking for it; every row is reported.
	legacy := newLegacyStore(x)
	rt := legacy.authorize(x, "tt03app")
	file := filepath.Join(t.TempDir(), "legacy.csv")
	if err := os.WriteFile(file, []byte("tt01app,"+rt+"\ntt03app,"+rt+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = x.cli("import", file)
	if err == nil || !strings.Contains(out, "2 rows: imported 0, recovered 0, unchanged 0, skipped 1, failed 1") ||
		!strings.Contains(out, "import with the component named") {
		t.Fatalf("import without --component: %v\n%s", err, out)
	}
	out, err = x.cli("import", file, "--component", e2eComponent)
	if err != nil || !strings.Contains(out, "imported 1") {
		t.Fatalf("import --component: %v\n%s", err, out)
	}
}

// A batch the admin API refuses as a whole, and the batches after it, are
// reported row by row: no row vanishes from the table or the counts.
func TestCLIImportAccountsForEveryRowWhenABatchFails(t *testing.T) {
	var batches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/tptoken/import" {
			http.NotFound(w, r)
			return
		}
		var rows []importRow
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &rows)
		if batches.Add(1) == 2 {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"several components are configured (ttA, ttB): name one, for example ?component=ttA"}`))
			return
		}
		ans := importAnswer{ComponentAppID: "ttA", Counts: map[string]int{}}
		for _, row := range rows {
			ans.Results = append(ans.Results, importRowResult{ImportResult: tokensource.ImportResult{AppID: row.AppID, Result: "imported"}})
		}
		_ = json.NewEncoder(w).Encode(ans)
	}))
	defer srv.Close()
	var csv strings.Builder
	for i := 1; i <= 7; i++ {
		fmt.Fprintf(&csv, "tt%02dapp,SENTINEL-rt-%d\n", i, i)
	}
	csv.WriteString("bad.appid,SENTINEL-rt-8\n")
	file := filepath.Join(t.TempDir(), "legacy.csv")
	if err := os.WriteFile(file, []byte(csv.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "import", file, "--batch", "3", "--address", strings.TrimPrefix(srv.URL, "http://"))
	if exitCodeOf(err) != 1 || !strings.Contains(err.Error(), "importing rows 4-6") || !strings.Contains(err.Error(), "every row of it and after it") {
		t.Fatalf("import with a refused batch: exit %d, %v\n%s", exitCodeOf(err), err, out)
	}
	if !strings.Contains(out, "8 rows: imported 3, recovered 0, unchanged 0, skipped 0, failed 5") {
		t.Fatalf("the counts do not account for every row:\n%s", out)
	}
	rowsSeen := 0
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] >= "1" && f[0] <= "8" && len(f[0]) == 1 && f[1] != "rows:" {
			rowsSeen++
			if (f[0] >= "4" && f[0] <= "6") && (f[1] != "-" || f[2] != "failed" || !strings.Contains(l, "several components")) {
				t.Errorf("row of the refused batch: %s", l)
			}
			if f[0] == "7" && (f[2] != "failed" || !strings.Contains(l, "not sent")) {
				t.Errorf("row after the refused batch: %s", l)
			}
		}
	}
	if rowsSeen != 8 || strings.Contains(out, "SENTINEL") || strings.Contains(out, "bad.appid") {
		t.Fatalf("%d of 8 rows in the table, or a value of the file printed:\n%s", rowsSeen, out)
	}
}

// Issue 15, finding 5: CSV columns swapped, so each "appid" is a refresh token
// (v1 tokens match the appid pattern). No value of the file may reach the
// terminal (output and error) or the log (Caddy's, at DEBUG, which also gets
// the CLI's error line when it runs in this process).
func TestCLIImportWithSwappedColumnsShowsAndLogsNoValueOfTheFile(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin(), withGlobal("metrics_per_appid"))
	legacy := newLegacyStore(x)
	var values []string
	var csv strings.Builder
	csv.WriteString("appid,authorizer_refresh_token\n")
	for _, id := range []string{"tt51app", "tt52app", "tt53app"} {
		rt := legacy.authorize(x, id)
		if !tokensource.ValidAppID(rt) {
			t.Fatalf("emulated v1 refresh tokens no longer pass the appid pattern: this test tests nothing")
		}
		fmt.Fprintf(&csv, "%s,%s\n", rt, id) // swapped
		values = append(values, rt, id)
	}
	file := filepath.Join(t.TempDir(), "legacy.csv")
	if err := os.WriteFile(file, []byte(csv.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	failedRows := `caddy_tptoken_import_rows_total{component_appid="` + e2eComponent + `",result="failed"}`
	before := metricValue(adminCall(t, x.admin, "GET", "/metrics", "").Body, failedRows)
	out, err := x.cli("import", file)
	if exitCodeOf(err) != 1 || !strings.Contains(out, "3 rows: imported 0, recovered 0, unchanged 0, skipped 0, failed 3") {
		t.Fatalf("swapped import: exit %d, %v\n%s", exitCodeOf(err), err, out)
	}
	for _, rt := range []string{values[0], values[2], values[4]} {
		if !strings.Contains(out, "appid fingerprint "+tokensource.Secret(rt).Fingerprint()) {
			t.Errorf("a failed row is not identified by the fingerprint of its appid field:\n%s", out)
		}
	}
	terminal := out + "\n" + err.Error()
	metrics := adminCall(t, x.admin, "GET", "/metrics", "").Body
	log := x.debugLog()
	for _, v := range values {
		for where, text := range map[string]string{"the terminal": terminal, "the log": log, "the metrics": metrics} {
			if strings.Contains(text, v) {
				t.Errorf("%s holds %q, a value of the import file", where, v)
			}
		}
	}
	if metricValue(metrics, failedRows)-before != 3 || !strings.Contains(metrics, `cause="import"`) {
		t.Errorf("import rows or import platform calls are not counted apart:\n%s", grepLines(metrics, "import"))
	}
	x.assertNoSecretIn("debug log", log)
}

// metricValue is the value of the series named exactly by series in a
// Prometheus text exposition (0 when absent).
func metricValue(exposition, series string) float64 {
	for _, l := range strings.Split(exposition, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			var f float64
			_, _ = fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Issue 15, finding 6: forced refreshes are budgeted per authorizer: beyond
// the budget the admin API answers 429 with Retry-After and calls nothing.
func TestForcedRefreshBeyondTheBudgetIs429AndBoundsPlatformRefreshes(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin())
	x.authorize("tt01app")
	before := x.emu.Stats().App("tt01app").Refreshes
	var ok, limited int
	for range 20 {
		a := x.adminDo("POST", "/tptoken/authorizers/tt01app/refresh", "")
		switch a.Status {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			limited++
			if ra := a.Header.Get("Retry-After"); ra == "" || ra == "0" || !strings.Contains(a.Body, "try again in") {
				t.Fatalf("429 without a Retry-After or a message saying when: %q %s", ra, a.Body)
			}
		default:
			t.Fatalf("forced refresh: %d %s", a.Status, a.Body)
		}
	}
	refreshes := x.emu.Stats().App("tt01app").Refreshes - before
	if ok != 3 || limited != 17 || refreshes != 3 {
		t.Fatalf("20 forced refreshes: %d ok, %d limited, %d platform refreshes; want 3, 17, 3", ok, limited, refreshes)
	}
	out, err := x.cli("recover", "tt01app")
	if exitCodeOf(err) != 1 || !strings.Contains(out, "HTTP 429") || !strings.Contains(out, "at most 3 forced refreshes or recoveries") ||
		!strings.Contains(out, "try again in") {
		t.Fatalf("CLI over the budget: %v\n%s", err, out)
	}
	if r := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); r.Status != 200 || r.Errno != 0 {
		t.Fatalf("requests are not budgeted: %+v", r)
	}
}

// recover of an appid with no record is refused and changes nothing; delete
// and seed-code do what curl did.
func TestCLIRecoverDeleteAndSeedCode(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin())
	x.authorize("tt01app")

	files := func() int {
		n := 0
		_ = filepath.Walk(x.storage, func(_ string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				n++
			}
			return nil
		})
		return n
	}
	stored := files()
	out, err := x.cli("recover", "tt0typo")
	if exitCodeOf(err) != 1 || !strings.Contains(out, "no record of this appid") || strings.Contains(out, "tt0typo") {
		t.Fatalf("recover of an unknown appid: %v\n%s", err, out)
	}
	out, err = x.cli("recover", "--new", "tt0typo")
	if exitCodeOf(err) != 1 || !strings.Contains(out, "40004") {
		t.Fatalf("recover --new of an appid the platform does not know: %v\n%s", err, out)
	}
	if files() != stored || x.emu.Stats().Total.Retrieves != 0 {
		t.Fatalf("refused recoveries changed storage (%d -> %d files) or got a code (%d retrieves)",
			stored, files(), x.emu.Stats().Total.Retrieves)
	}
	if strings.Contains(x.debugLog(), "tt0typo") && !strings.Contains(x.debugLog(), `"uri":"/tptoken/authorizers/tt0typo/recover?new=1"`) {
		t.Fatal("the unconfirmed appid reached a log line other than Caddy's own admin request line")
	}

	// seed-code: the code from standard input, the appid from the platform.
	code, err := x.emu.Authorize("tt02app", false)
	if err != nil {
		t.Fatal(err)
	}
	out, err = runCLIWithInput(t, code+"\n", "seed-code", "--address", x.admin)
	x.assertNoSecretIn("seed-code output", out)
	if err != nil || !strings.Contains(out, "tt02app") || !strings.Contains(out, "active") {
		t.Fatalf("seed-code: %v\n%s", err, out)
	}
	code3, _ := x.emu.Authorize("tt03app", false)
	out, err = runCLIWithInput(t, code3+"\n", "seed-code", "--appid", "tt03app", "--json", "--address", x.admin)
	var in tokensource.Info
	if err != nil || json.Unmarshal([]byte(out), &in) != nil || in.AppID != "tt03app" {
		t.Fatalf("seed-code --appid --json: %v\n%s", err, out)
	}

	out, err = x.cli("delete", "tt01app", "tt02app", "--yes")
	if err != nil || strings.Count(out, "deleted") != 2 {
		t.Fatalf("delete: %v\n%s", err, out)
	}
	if r := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); r.Status != 403 || r.TPToken.Error != "unknown_authorizer" {
		t.Fatalf("after delete: %+v", r)
	}
	x.assertNoSecretIn("debug log", x.debugLog())
}

// Rotating encryption_key in a running Caddy: the new key current, the old one
// previous; `caddy tptoken reseal`; then the old key removed. Nothing is lost.
// keyIDOfKey2 is the key id of TPT_KEY2 ("ffffffffffffffff0000000000000000"):
// the first 4 bytes of SHA-256("tptoken encryption key id\x00" + key), in hex.
// Stored records name their key by it, so it must never change.
const keyIDOfKey2 = "45def1c7"

func TestCLIResealCompletesAnEncryptionKeyRotation(t *testing.T) {
	t.Setenv("TPT_KEY1", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
	t.Setenv("TPT_KEY2", "ZmZmZmZmZmZmZmZmZmZmZjAwMDAwMDAwMDAwMDAwMDA=")
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin(), withGlobal("encryption_key {env.TPT_KEY1}"))
	x.authorize("tt01app", "tt02app")

	x.global = "encryption_key {env.TPT_KEY2}\n\t\tprevious_encryption_keys {env.TPT_KEY1}"
	x.start()
	for _, id := range []string{"tt01app", "tt02app"} {
		if r := x.call("GET", x.apiPath(), appidHeader(id), ""); r.Status != 200 || r.Errno != 0 {
			t.Fatalf("%s with the old key as previous: %+v", id, r)
		}
	}
	out, err := x.cli("reseal")
	if err != nil || !strings.Contains(out, "RESEALED") || !strings.Contains(out, e2eComponent) {
		t.Fatalf("reseal: %v\n%s", err, out)
	}
	var ans resealAnswer
	out, err = x.cli("reseal", "--json")
	if err != nil || json.Unmarshal([]byte(out), &ans) != nil || len(ans.Components) != 1 || ans.Components[0].Resealed != 0 ||
		ans.Components[0].Current < 4 || ans.Components[0].KeyID != keyIDOfKey2 {
		t.Fatalf("second reseal --json (nothing left to do): %v\n%s", err, out)
	}

	x.global = "encryption_key {env.TPT_KEY2}"
	x.start()
	for _, id := range []string{"tt01app", "tt02app"} {
		if r := x.call("GET", x.apiPath(), appidHeader(id), ""); r.Status != 200 || r.Errno != 0 {
			t.Fatalf("%s with the new key only: %+v", id, r)
		}
	}
	x.global = ""
	x.start()
	if out, err := x.cli("reseal"); exitCodeOf(err) != 1 || !strings.Contains(err.Error(), "no encryption_key") {
		t.Fatalf("reseal without a key: %v\n%s", err, out)
	}
}
