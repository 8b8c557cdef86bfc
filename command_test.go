package tptoken

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// runCLI runs `caddy tptoken <args>` in process, as Caddy's cobra root would,
// and returns what it printed.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "tptoken", SilenceErrors: true}
	configureCommand(root)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// exitCodeOf is the exit status Caddy's main gives a command that returned
// err: the code of caddycmd's exit error (unexported: read by reflection),
// else 1 for any error.
func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	v := reflect.ValueOf(err)
	if v.Kind() == reflect.Pointer && v.Elem().Kind() == reflect.Struct {
		if f := v.Elem().FieldByName("ExitCode"); f.IsValid() && f.CanInt() {
			return int(f.Int())
		}
	}
	return 1
}

// cli runs a command against x's admin endpoint and checks its output holds no secret.
func (x *e2e) cli(args ...string) (string, error) {
	x.t.Helper()
	out, err := runCLI(x.t, append(args, "--address", x.admin)...)
	x.assertNoSecretIn("caddy tptoken "+strings.Join(args, " "), out)
	if err != nil {
		x.assertNoSecretIn("caddy tptoken error", err.Error())
	}
	return out, err
}

func TestCLIStatusPrintsComponentsAndAuthorizersAsTablesAndJSON(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin())
	x.authorize("tt01app", "tt02app")
	if err := x.emu.Unauthorize("tt02app", true); err != nil {
		t.Fatal(err)
	}

	out, err := x.cli("status")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	for _, want := range []string{"COMPONENT", "TICKET AGE", e2eComponent, "Authorizers of " + e2eComponent + ": 2 shown",
		"APPID", "STATE", "tt01app", "active", "tt02app", "unauthorized"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}

	out, err = x.cli("status", "--json")
	var st statusJSON
	if err != nil || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	infos := st.Authorizers[e2eComponent]
	if len(st.Components) != 1 || st.Components[0].TicketReceivedAt.IsZero() || len(infos) != 2 ||
		infos[0].State != tokensource.StateActive || infos[1].State != tokensource.StateUnauthorized {
		t.Fatalf("status --json = %s", out)
	}

	out, err = x.cli("status", "--state", "unauthorized", "--json")
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || len(st.Authorizers[e2eComponent]) != 1 {
		t.Fatalf("status --state unauthorized: %v\n%s", err, out)
	}
	out, err = x.cli("status", "--limit", "1")
	if err != nil || !strings.Contains(out, ": 1 shown") || strings.Contains(out, "tt02app") {
		t.Fatalf("status --limit 1: %v\n%s", err, out)
	}

	out, err = x.cli("status", "tt01app")
	if err != nil {
		t.Fatalf("status tt01app: %v\n%s", err, out)
	}
	for _, want := range []string{"appid:", "tt01app", "state:", "active", "access token:", "refresh token:", "in ", "permissions:"} {
		if !strings.Contains(out, want) {
			t.Errorf("status tt01app lacks %q:\n%s", want, out)
		}
	}
	out, err = x.cli("status", "tt01app", "--json")
	var in tokensource.Info
	if err != nil || json.Unmarshal([]byte(out), &in) != nil || in.AppID != "tt01app" || in.Generation < 1 {
		t.Fatalf("status tt01app --json: %v\n%s", err, out)
	}

	// An appid with no record is not echoed (it may be a pasted token): its fingerprint is.
	out, err = x.cli("status", "tt404")
	if err == nil || exitCodeOf(err) != 1 || !strings.Contains(err.Error(), "no record") ||
		!strings.Contains(err.Error(), tokensource.Secret("tt404").Fingerprint()) || strings.Contains(err.Error()+out, "tt404") {
		t.Fatalf("status tt404: %v\n%s", err, out)
	}
	_, err = x.cli("status", "bad.appid")
	if err == nil || !strings.Contains(err.Error(), "invalid appid") || strings.Contains(err.Error(), "bad.appid") {
		t.Fatalf("status bad.appid: %v", err)
	}
	closed := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	_, err = runCLI(t, "status", "--address", closed)
	if err == nil || exitCodeOf(err) != 1 || !strings.Contains(err.Error(), "cannot reach Caddy's admin API at "+closed) ||
		!strings.Contains(err.Error(), "is Caddy running") || !strings.Contains(err.Error(), "--address") {
		t.Fatalf("status against a closed port: %v", err)
	}
}

func TestCLIRefreshAndRecoverReportEachAppid(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin())
	x.authorize("tt01app", "tt02app")

	before := x.emu.Stats()
	out, err := x.cli("refresh", "tt01app", "tt02app")
	if err != nil {
		t.Fatalf("refresh: %v\n%s", err, out)
	}
	after := x.emu.Stats()
	if after.App("tt01app").Refreshes != before.App("tt01app").Refreshes+1 || after.App("tt02app").Refreshes != before.App("tt02app").Refreshes+1 {
		t.Fatalf("refresh did not refresh each authorizer once:\n%s", out)
	}
	if !strings.Contains(out, "RESULT") || strings.Count(out, " ok ") != 2 {
		t.Fatalf("refresh output:\n%s", out)
	}

	out, err = x.cli("refresh", "tt01app", "tt404")
	if err == nil || exitCodeOf(err) != 1 || !strings.Contains(err.Error(), "1 of 2") {
		t.Fatalf("refresh with an unknown appid: %v", err)
	}
	if strings.Contains(out, "tt404") || !strings.Contains(out, "failed") || !strings.Contains(out, "no record of this appid (fingerprint "+tokensource.Secret("tt404").Fingerprint()) {
		t.Fatalf("refresh output with an unknown appid:\n%s", out)
	}

	before = x.emu.Stats()
	out, err = x.cli("recover", "tt02app", "--json")
	var res []actionResult
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || len(res) != 1 || !res[0].OK || res[0].Authorizer.State != tokensource.StateActive {
		t.Fatalf("recover --json: %v\n%s", err, out)
	}
	if got := x.emu.Stats().App("tt02app").Retrieves; got != before.App("tt02app").Retrieves+1 {
		t.Fatalf("recover retrieved %d codes", got-before.App("tt02app").Retrieves)
	}
	if r := x.call("GET", x.apiPath(), appidHeader("tt02app"), ""); r.Status != 200 || r.Errno != 0 {
		t.Fatalf("after recover: %+v", r)
	}
	if _, err := x.cli("recover"); err == nil {
		t.Fatal("recover without an appid succeeded")
	}
}

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

func TestCLIFormatsDurationsAndAdminErrors(t *testing.T) {
	for d, want := range map[time.Duration]string{
		12 * time.Second: "12s", 3*time.Minute + 12*time.Second: "3m12s", 119 * time.Minute: "1h59m",
		(29*24 + 23) * time.Hour: "29d23h", -90 * time.Second: "1m30s",
	} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
	now := time.Now()
	if got := expiresText(now.Add(2*time.Hour), now); got != "in 2h00m" {
		t.Errorf("expiresText = %q", got)
	}
	if got := expiresText(now.Add(-time.Minute), now); got != "expired 1m00s ago" {
		t.Errorf("expiresText = %q", got)
	}
	if got := relTime(time.Time{}, now); got != "-" {
		t.Errorf("relTime(zero) = %q", got)
	}
	err := adminErrorText(errors.New(`caddy responded with error: HTTP 404: {"error":"authorizer tt9: no record for this appid"}`+"\n"), "localhost:2019")
	if err.Error() != "HTTP 404: authorizer tt9: no record for this appid" {
		t.Errorf("adminErrorText = %q", err)
	}
	err = adminErrorText(errors.New("caddy responded with error: HTTP 502: Bad Gateway"), "localhost:2019")
	if err.Error() != "HTTP 502: Bad Gateway" {
		t.Errorf("adminErrorText = %q", err)
	}
}
