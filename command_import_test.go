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

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// `caddy tptoken import`: files read row by row, every row reported, no value
// of the file shown or logged.

func TestCLIImportReadsCSVAndJSONAndReportsEveryRow(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin())
	legacy := newLegacyStore(x)
	good := legacy.authorize(x, "tt21app")
	dead := legacy.authorize(x, "tt22app")
	legacy.refresh(dead)
	expiry := time.Now().Add(10 * 24 * time.Hour).UTC().Format(time.RFC3339)

	dir := t.TempDir()
	csvFile := filepath.Join(dir, "legacy.csv")
	csvData := "appid,authorizer_refresh_token,refresh_expires_at\n" +
		"# exported from the legacy store\n" +
		"tt21app," + good + "," + expiry + "\n" +
		"tt22app, " + dead + "\n" +
		"bad.appid,SENTINEL-rt-1\n" +
		"tt23app\n" +
		"tt24app,SENTINEL-rt-2,next week\n"
	if err := os.WriteFile(csvFile, []byte(csvData), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := x.cli("import", csvFile, "--batch", "2")
	if err == nil || !strings.Contains(err.Error(), "3 of 5 rows failed") {
		t.Fatalf("import with bad rows: %v\n%s", err, out)
	}
	if strings.Contains(out, "SENTINEL") {
		t.Fatalf("import output quotes a token:\n%s", out)
	}
	if strings.ContainsAny(out, "\r\x1b") {
		t.Fatalf("a progress line was drawn without a terminal:\n%q", out)
	}
	lines := strings.Split(out, "\n")
	for _, want := range []struct{ row, appid, result string }{
		{"3", "tt21app", "imported"}, {"4", "tt22app", "recovered"}, {"5", "-", "failed"},
		{"6", "-", "failed"}, {"7", "-", "failed"}, // tt24app was not confirmed: not shown
	} {
		found := false
		for _, l := range lines {
			f := strings.Fields(l)
			if len(f) >= 3 && f[0] == want.row && f[1] == want.appid && f[2] == want.result {
				found = true
			}
		}
		if !found {
			t.Errorf("no row %s %s %s in:\n%s", want.row, want.appid, want.result, out)
		}
	}
	if !strings.Contains(out, "5 rows: imported 1, recovered 1, unchanged 0, skipped 0, failed 3") {
		t.Fatalf("import summary:\n%s", out)
	}

	// The same file again: the done rows are unchanged; no platform call.
	refreshes := x.emu.Stats().Total.Refreshes
	out, _ = x.cli("import", csvFile)
	if !strings.Contains(out, "unchanged 2") || x.emu.Stats().Total.Refreshes != refreshes {
		t.Fatalf("second import:\n%s", out)
	}

	// JSON file, --json output.
	fresh := legacy.authorize(x, "tt25app")
	jsonFile := filepath.Join(dir, "legacy.export") // no extension: the content says JSON
	rows := fmt.Sprintf(`[{"appid": "tt25app", "authorizer_refresh_token": %q, "refresh_expires_at": %d},
		{"appid": "tt21app", "authorizer_refresh_token": %q}]`, fresh, time.Now().Add(time.Hour).Unix(), good)
	if err := os.WriteFile(jsonFile, []byte(rows), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = x.cli("import", jsonFile, "--json")
	var res importJSON
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || len(res.Results) != 2 ||
		res.Results[0].Result != "imported" || res.Results[1].Result != "unchanged" || res.Counts["imported"] != 1 {
		t.Fatalf("import --json: %v\n%s", err, out)
	}
	if r := x.call("GET", x.apiPath(), appidHeader("tt25app"), ""); r.Status != 200 || r.Errno != 0 {
		t.Fatalf("tt25app after import: %+v", r)
	}
	if _, err := x.cli("import", filepath.Join(dir, "missing.csv")); err == nil {
		t.Fatal("import of a missing file succeeded")
	}
	if _, err := x.cli("import", csvFile, "--batch", "0"); err == nil {
		t.Fatal("--batch 0 accepted")
	}
	x.assertNoSecretIn("debug log", x.debugLog())
}

func TestParseImportFileReadsCSVAndJSONRowsAndKeepsBadOnes(t *testing.T) {
	csvData := "appid,authorizer_refresh_token\n\ntt01,rt-1\n tt02 , rt-2 , 1900000000\n# note\ntt03\ntt04,rt-4,2026-01-02T03:04:05Z\ntt05,rt-5,soon\n"
	rows, err := parseImportFile("x.csv", "", []byte(csvData))
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		pos          int
		appid, rt    string
		exp          int64
		errMentioned string
	}
	want := []row{
		{3, "tt01", "rt-1", 0, ""},
		{4, "tt02", "rt-2", 1900000000, ""},
		{6, "tt03", "", 0, "1 field(s)"}, // the appid is kept for its fingerprint
		{7, "tt04", "rt-4", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).Unix(), ""},
		{8, "tt05", "rt-5", 0, "refresh_expires_at"},
	}
	if len(rows) != len(want) {
		t.Fatalf("got %d rows", len(rows))
	}
	for i, w := range want {
		r := rows[i]
		var exp int64
		if !r.row.RefreshExpiresAt.IsZero() {
			exp = r.row.RefreshExpiresAt.Unix()
		}
		if r.pos != w.pos || r.row.AppID != w.appid || r.row.RefreshToken != w.rt || exp != w.exp ||
			(w.errMentioned == "") != (r.err == "") || !strings.Contains(r.err, w.errMentioned) {
			t.Errorf("row %d = %+v (err %q), want %+v", i, r.row, r.err, w)
		}
		if strings.Contains(r.err, "rt-") {
			t.Errorf("row %d error quotes the token: %s", i, r.err)
		}
	}

	rows, err = parseImportFile("x.json", "", []byte(`[{"appid":"tt01","authorizer_refresh_token":"rt-1","refresh_expires_at":"2026-01-02T03:04:05Z"},
		{"appid":"tt02","authorizer_refresh_token":"rt-2","extra":1}]`))
	if err != nil || len(rows) != 2 || rows[0].err != "" || rows[0].row.RefreshExpiresAt.IsZero() ||
		rows[1].row.AppID != "tt02" || !strings.Contains(rows[1].err, `unknown field "extra"`) {
		t.Fatalf("json rows = %+v %+v, %v", rows[0], rows[1], err)
	}
	if _, err := parseImportFile("x.json", "", []byte(`{"appid":"tt01"}`)); err == nil {
		t.Fatal("a JSON object was accepted as the row list")
	}
	if rows, err := parseImportFile("-", "", []byte(" [ ]")); err != nil || len(rows) != 0 {
		t.Fatalf("stdin JSON guess: %v %v", rows, err)
	}
	if _, err := parseImportFile("x", "yaml", nil); err == nil {
		t.Fatal("--format yaml accepted")
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
