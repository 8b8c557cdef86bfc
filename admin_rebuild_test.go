package tptoken

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// streamCall posts body to an admin route asking for NDJSON and returns the
// answer's status, content type and lines (each decoded into a map).
func (x *e2e) streamCall(path, body string) (int, string, []map[string]any) {
	x.t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+x.admin+path, strings.NewReader(body))
	if err != nil {
		x.t.Fatal(err)
	}
	req.Header.Set("Origin", "http://"+x.admin)
	req.Header.Set("Accept", ndjsonType)
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		x.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	x.assertNoSecretIn("POST "+path, string(b))
	var lines []map[string]any
	if err := decodeNDJSON(bytes.NewReader(b), func(_ string, line []byte) error {
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			return err
		}
		if !bytes.HasSuffix(bytes.TrimSpace(line), []byte("}")) {
			return fmt.Errorf("not one object: %s", line)
		}
		lines = append(lines, m)
		return nil
	}); err != nil {
		x.t.Fatalf("POST %s: %v\n%s", path, err, b)
	}
	if resp.StatusCode == http.StatusOK && bytes.Count(b, []byte("\n")) != len(lines) {
		x.t.Fatalf("POST %s: %d lines for %d objects: not NDJSON\n%s", path, bytes.Count(b, []byte("\n")), len(lines), b)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), lines
}

// The rebuild through the admin API and the CLI, in a real Caddy: the route
// streams its events, the UPDATE_AUTHORIZED pushes the retrieves cause reach
// tptoken_events and change nothing, the rebuilt authorizers serve, and the
// CLI prints the result table and exits 1 while an authorizer failed.
func TestRebuildRouteStreamsEventsAndTheCLIReportsEachAuthorizer(t *testing.T) {
	x := newE2E(t, tokensource.V2, emulator.Lifetimes{}, withAdmin())
	x.authorize("tt01kept")
	for _, id := range []string{"tt02lost", "tt03lost"} {
		if _, err := x.emu.Authorize(id, false); err != nil { // their AUTHORIZED push never arrived
			t.Fatal(err)
		}
	}
	if r := x.call("GET", x.apiPath(), appidHeader("tt02lost"), ""); r.Status != http.StatusForbidden {
		t.Fatalf("before the rebuild: %d", r.Status)
	}

	// Options are checked before the stream begins: a plain JSON error.
	if st, ct, lines := x.streamCall("/tptoken/rebuild", `{"rate": 99}`); st != http.StatusBadRequest || !strings.HasPrefix(ct, "application/json") ||
		len(lines) != 1 || !strings.Contains(fmt.Sprint(lines[0]["error"]), "at most 10") {
		t.Fatalf("bad rate: %d %s %v", st, ct, lines)
	}
	if st, _, lines := x.streamCall("/tptoken/rebuild", `{"verfy": true}`); st != http.StatusBadRequest || !strings.Contains(fmt.Sprint(lines[0]["error"]), "verfy") {
		t.Fatalf("a misspelt option: %d %v", st, lines)
	}

	st, ct, lines := x.streamCall("/tptoken/rebuild", `{"rate": 10}`)
	if st != http.StatusOK || ct != ndjsonType {
		t.Fatalf("status %d, content type %q", st, ct)
	}
	results := map[string]string{}
	var events []string
	for _, l := range lines {
		events = append(events, fmt.Sprint(l["event"]))
		if l["event"] == "result" {
			results[fmt.Sprint(l["appid"])] = fmt.Sprint(l["result"])
		}
	}
	if events[0] != "start" || events[len(events)-1] != "end" || !strings.Contains(strings.Join(events, " "), "listed") {
		t.Fatalf("events %v", events)
	}
	if results["tt01kept"] != "unchanged" || results["tt02lost"] != "rebuilt" || results["tt03lost"] != "rebuilt" || len(results) != 3 {
		t.Fatalf("results %v", results)
	}
	end := lines[len(lines)-1]
	if sum, _ := end["summary"].(map[string]any); sum == nil || fmt.Sprint(sum["counts"]) != "map[rebuilt:2 unchanged:1]" || sum["platform_total"] != 3.0 {
		t.Fatalf("end line %v", end)
	}
	waitUntil(t, 10*time.Second, "the UPDATE_AUTHORIZED pushes of the retrieved codes", func() bool {
		return x.emu.Stats().Total.PushesSent >= 3 // AUTHORIZED of tt01kept, and the two UPDATE_AUTHORIZED
	})
	for _, id := range []string{"tt02lost", "tt03lost"} {
		if c := x.emu.Stats().App(id); c.Exchanges != 1 || c.Retrieves != 1 {
			t.Errorf("%s: %+v: want one retrieve and one exchange (the push's code is already exchanged)", id, c)
		}
		if r := x.call("GET", x.apiPath(), appidHeader(id), ""); r.Status != 200 || r.Data.AppID != id {
			t.Errorf("%s after the rebuild: %+v", id, r)
		}
	}

	// The CLI (not a terminal: no progress line): nothing left to do.
	out, err := x.cli("rebuild")
	if err != nil || !strings.Contains(out, "APPID     RESULT     STATE   GEN  DETAIL") ||
		!strings.Contains(out, "3 authorizers: rebuilt 0, unchanged 3, failed 0") || strings.ContainsAny(out, "\r\x1b") {
		t.Fatalf("caddy tptoken rebuild: %v\n%q", err, out)
	}
	// An exchange whose answer is lost: the run fails (exit 1) naming it; a rerun fixes it.
	if _, err := x.emu.Authorize("tt04drop", false); err != nil {
		t.Fatal(err)
	}
	if err := x.emu.SetFaults(emulator.OpExchange, emulator.Faults{DropResponse: 1, AppID: "tt04drop"}); err != nil {
		t.Fatal(err)
	}
	out, err = x.cli("rebuild", "--rate", "10")
	if exitCodeOf(err) != 1 || !strings.Contains(err.Error(), "1 of 4 authorizers failed") || !strings.Contains(out, "tt04drop  failed") {
		t.Fatalf("rebuild with a lost exchange answer: exit %d %v\n%s", exitCodeOf(err), err, out)
	}
	out, err = x.cli("rebuild", "--json")
	var ans rebuildAnswer
	if err != nil || json.Unmarshal([]byte(out), &ans) != nil || ans.Counts["rebuilt"] != 1 || ans.Counts["unchanged"] != 3 ||
		ans.ComponentAppID != e2eComponent || ans.Summary.Event != "end" {
		t.Fatalf("rerun --json: %v\n%s", err, out)
	}
	// Without Accept: one JSON document.
	var doc rebuildAnswer
	x.adminJSON("POST", "/tptoken/rebuild", "", http.StatusOK, &doc)
	if len(doc.Results) != 4 || doc.Counts["unchanged"] != 4 {
		t.Fatalf("JSON answer %+v", doc)
	}
	x.assertNoSecretIn("debug log", x.debugLog())
}

// The import route streams a line per row as it is done (what the CLI's
// progress line counts), then the counts.
func TestImportRouteStreamsARowResultPerLine(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{}, withAdmin())
	legacy := newLegacyStore(x)
	good := legacy.authorize(x, "tt31app")
	st, ct, lines := x.streamCall("/tptoken/import", fmt.Sprintf(`[{"appid": "tt31app", "authorizer_refresh_token": %q},
		{"appid": "bad.appid", "authorizer_refresh_token": "SENTINEL"}]`, good))
	if st != http.StatusOK || ct != ndjsonType || len(lines) != 4 {
		t.Fatalf("%d %s %v", st, ct, lines)
	}
	if lines[0]["event"] != "start" || lines[0]["rows"] != 2.0 || lines[3]["event"] != "end" ||
		fmt.Sprint(lines[3]["counts"]) != "map[failed:1 imported:1]" {
		t.Fatalf("lines %v", lines)
	}
	byRow := map[float64]string{}
	for _, l := range lines[1:3] {
		byRow[l["row"].(float64)] = fmt.Sprint(l["result"])
	}
	if byRow[1] != "imported" || byRow[2] != "failed" {
		t.Fatalf("row results %v", byRow)
	}
}

// `caddy tptoken status` says when a rebuild runs, and how far it got.
func TestStatusShowsARunningRebuild(t *testing.T) {
	now := time.Now()
	var out bytes.Buffer
	st := componentStatus{ComponentInfo: tokensource.ComponentInfo{ComponentAppID: "tt00comp", Family: tokensource.V1,
		Rebuild: &tokensource.RebuildEvent{Event: "running", Trigger: tokensource.RebuildOnEmpty, StartedAt: now.Add(-90 * time.Second),
			PlatformTotal: 120, Counts: map[string]int{"rebuilt": 30, "unchanged": 7}}}}
	if err := printStatus(&out, statusJSON{Components: []componentStatus{st}, Authorizers: map[string][]tokensource.Info{}}, now); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "tt00comp: a rebuild (trigger auto) is running since 1m30s ago: 37 of 120 authorizers done") {
		t.Fatalf("status:\n%s", out.String())
	}
}
