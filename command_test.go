package tptoken

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

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

// Scripts must be able to trust the exit status: a typo or an invalid value
// fails (status 1) and names what is valid, before anything is asked of Caddy.
func TestCLIFailsOnUnknownSubcommandsAndInvalidFlagValues(t *testing.T) {
	closed := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // nothing listens: no case may get that far
	cases := []struct {
		args    []string
		mention []string
	}{
		{[]string{"stauts"}, []string{`unknown subcommand "stauts"`, "status, apps, import, refresh, recover, seed-code, delete, reseal", "did you mean status"}},
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
