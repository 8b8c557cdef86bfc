package tptoken

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// `caddy tptoken import`: legacy refresh tokens from a CSV or JSON file,
// through the running instance's admin API (POST /tptoken/import).

func importCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "import <file|->",
		Short: "Imports refresh tokens from a legacy store (JSON or CSV)",
		Long: `
Imports authorizer refresh tokens exported from a legacy token store. Each token
is verified by one refresh under the authorizer's lock; a token the platform
rejects is recovered (retrieve code + exchange) when the authorization still
exists. Every row is reported: imported, recovered, unchanged (imported
before), skipped (already active in tptoken) or failed. Importing the same file
again changes nothing.

The file is a JSON array of {"appid", "authorizer_refresh_token",
"refresh_expires_at"?} or CSV rows appid,authorizer_refresh_token[,refresh_expires_at]
(an optional header row, '#' comments). refresh_expires_at is RFC 3339 or Unix
seconds. Stop the legacy refresher for these authorizers first: a refresh by
both systems burns the token chain.

No value of the file is printed unless it is a confirmed appid: a failed row is
shown by its row number and the fingerprint of its appid field (the first 16
hex digits of its SHA-256: printf %s "$APPID" | sha256sum | cut -c1-16).
Platform calls of an import are counted with cause="import" in the metrics.
`,
		Args: cobra.ExactArgs(1),
		RunE: runWith(cmdImport),
	}
	cmd.Flags().String("format", "", "json or csv (default: from the file extension, else guessed from the content)")
	cmd.Flags().Int("batch", 50, "Rows per admin API request (at most 1000)")
	return cmd
}

// importFileRow is a row read from the import file, with its position there.
type importFileRow struct {
	pos int // 1-based data row (CSV: line number)
	row importRow
	err string // why the row cannot be sent
}

// importJSON is what `import --json` prints.
type importJSON struct {
	File    string            `json:"file"`
	Results []importRowResult `json:"results"` // Row: the row in the file
	Counts  map[string]int    `json:"counts"`
}

func cmdImport(fl caddycmd.Flags, cio cliIO) (int, error) {
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	batch := fl.Int("batch")
	if batch < 1 || batch > maxImportRows {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("--batch %d: want 1 to %d", batch, maxImportRows)
	}
	format := fl.String("format")
	if format != "" {
		if err := oneOf("format", format, "json", "csv"); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
	}
	name := fl.Args()[0]
	var data []byte
	if name == "-" {
		data, err = io.ReadAll(io.LimitReader(cio.in, 256<<20))
	} else {
		data, err = os.ReadFile(name)
	}
	if err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("reading %s: %v", name, err)
	}
	rows, err := parseImportFile(name, format, data)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if len(rows) == 0 {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("%s holds no rows", name)
	}

	res := importJSON{File: name, Counts: map[string]int{}}
	ctx, cancel := interruptible()
	defer cancel()
	bar := newProgress(cio.errOut, fl.Bool("json"), "import "+name)
	failed := 0
	record := func(r importRowResult) {
		res.Results = append(res.Results, r)
		if r.Result == "failed" {
			failed++
		}
		bar.update(len(res.Results), len(rows), failed)
	}
	failRow := func(r *importFileRow, detail string) {
		record(importRowResult{Row: r.pos, ImportResult: tokensource.ImportResult{
			Fingerprint: tokensource.Secret(r.row.AppID).Fingerprint(), Result: "failed", Detail: detail}})
	}
	var pending []*importFileRow
	var sendErr error
	interrupted := false
	answered := 0 // rows the admin API answered for
	flush := func() {
		if len(pending) == 0 {
			return
		}
		switch {
		case interrupted:
			for _, r := range pending {
				failRow(r, "not attempted: interrupted (import the file again; rows done come back unchanged)")
			}
			pending = pending[:0]
			return
		case sendErr != nil: // an earlier batch failed: these rows are not sent
			for _, r := range pending {
				failRow(r, "not sent: an earlier batch failed (see below); import the file again")
			}
			pending = pending[:0]
			return
		}
		body := make([]importRow, len(pending))
		for i, r := range pending {
			body[i] = r.row
		}
		got := make([]bool, len(pending))
		err := c.stream(ctx, http.MethodPost, "/tptoken/import", body, func(event string, line []byte) error {
			var results []importRowResult
			switch event {
			case "result":
				var ev importEvent
				if err := json.Unmarshal(line, &ev); err != nil {
					return err
				}
				results = []importRowResult{ev.importRowResult}
			case "": // a server answering with one JSON document: the results in row order
				var ans importAnswer
				if err := json.Unmarshal(line, &ans); err != nil {
					return err
				}
				if len(ans.Results) != len(pending) {
					return fmt.Errorf("the admin API answered %d results for %d rows", len(ans.Results), len(pending))
				}
				for i := range ans.Results {
					ans.Results[i].Row = i + 1
				}
				results = ans.Results
			}
			for _, r := range results {
				if r.Row < 1 || r.Row > len(pending) || got[r.Row-1] {
					return fmt.Errorf("the admin API answered a result for row %d of %d", r.Row, len(pending))
				}
				got[r.Row-1] = true
				r.Row = pending[r.Row-1].pos
				answered++
				record(r)
			}
			return nil
		})
		missing := 0
		for _, g := range got {
			if !g {
				missing++
			}
		}
		switch {
		case errors.Is(err, errInterrupted):
			interrupted = true
			for i, r := range pending {
				if !got[i] {
					failRow(r, "interrupted while it was sent: the server finishes it; import the file again to see its result (safe)")
				}
			}
		case err == nil && missing > 0:
			err = fmt.Errorf("the admin API answered %d results for %d rows", len(pending)-missing, len(pending))
			fallthrough
		case err != nil:
			sendErr = fmt.Errorf("importing rows %d-%d: %v", pending[0].pos, pending[len(pending)-1].pos, err)
			for i, r := range pending {
				if !got[i] {
					failRow(r, "not imported: the request for its batch failed: "+err.Error())
				}
			}
		}
		pending = pending[:0]
	}
	for _, r := range rows {
		if r.err != "" {
			failRow(r, r.err)
			continue
		}
		pending = append(pending, r)
		if len(pending) == batch {
			flush()
		}
	}
	flush()
	bar.clear()
	sort.SliceStable(res.Results, func(i, j int) bool { return res.Results[i].Row < res.Results[j].Row })
	for _, r := range res.Results {
		res.Counts[r.Result]++
	}
	if fl.Bool("json") {
		if err := printJSON(cio.out, res); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
	} else {
		tw := tabwriter.NewWriter(cio.out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ROW\tAPPID\tRESULT\tSTATE\tGEN\tDETAIL")
		for _, r := range res.Results {
			state, gen := "-", "-"
			if r.Info != nil {
				state, gen = string(r.Info.State), strconv.FormatUint(r.Info.Generation, 10)
			}
			detail := r.Detail
			if r.AppID == "" && r.Fingerprint != "" {
				detail = "appid fingerprint " + r.Fingerprint + ": " + detail
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.Row, orDash(r.AppID), r.Result, state, gen, orDash(detail))
		}
		_ = tw.Flush()
		fmt.Fprintf(cio.out, "\n%s\n", countsText(res.Counts, len(res.Results)))
	}
	if interrupted {
		return exitInterrupted, fmt.Errorf("interrupted after %d of %d rows; rows in flight finish on the server; importing the file again is safe (rows done come back unchanged)",
			answered, len(res.Results))
	}
	if sendErr != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("%v (every row of it and after it is marked failed; rows before were imported; importing the file again is safe)", sendErr)
	}
	if failed > 0 {
		return 1, fmt.Errorf("%d of %d rows failed: see the DETAIL column; fix them and import the file again (done rows stay unchanged)", failed, len(res.Results))
	}
	return caddy.ExitCodeSuccess, nil
}

func countsText(counts map[string]int, total int) string {
	parts := []string{}
	for _, k := range []string{"imported", "recovered", "unchanged", "skipped", "failed"} {
		parts = append(parts, fmt.Sprintf("%s %d", k, counts[k]))
	}
	return fmt.Sprintf("%d rows: %s", total, strings.Join(parts, ", "))
}

// parseImportFile reads a JSON array of rows or CSV rows. Rows that cannot be
// read are kept with their error, so they are reported like the others.
func parseImportFile(name, format string, data []byte) ([]*importFileRow, error) {
	if format == "" {
		switch strings.ToLower(filepath.Ext(name)) {
		case ".json":
			format = "json"
		case ".csv":
			format = "csv"
		default:
			format = "csv"
			if t := bytes.TrimSpace(data); len(t) > 0 && t[0] == '[' {
				format = "json"
			}
		}
	}
	switch format {
	case "json":
		return parseImportJSON(data)
	case "csv":
		return parseImportCSV(data)
	}
	return nil, fmt.Errorf("--format %q: use json or csv", format)
}

func parseImportJSON(data []byte) ([]*importFileRow, error) {
	var raw []json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf(`the file is not a JSON array of {"appid", "authorizer_refresh_token", "refresh_expires_at"?}: %s`, jsonErrorText(err))
	}
	rows := make([]*importFileRow, len(raw))
	for i, m := range raw {
		r := &importFileRow{pos: i + 1}
		if err := decodeStrict(m, &r.row); err != nil {
			r.err = strings.Replace(err.Error(), "body", "row", 1)
			var peek struct {
				AppID string `json:"appid"`
			}
			if json.Unmarshal(m, &peek) == nil {
				r.row.AppID = peek.AppID // for its fingerprint
			}
		}
		rows[i] = r
	}
	return rows, nil
}

func parseImportCSV(data []byte) ([]*importFileRow, error) {
	cr := csv.NewReader(bytes.NewReader(data))
	cr.FieldsPerRecord = -1
	cr.Comment = '#'
	cr.TrimLeadingSpace = true
	var rows []*importFileRow
	for first := true; ; first = false {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return rows, nil
		}
		line, _ := cr.FieldPos(0)
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				// A quoting error: report the line without quoting it.
				rows = append(rows, &importFileRow{pos: pe.Line, err: fmt.Sprintf("CSV line %d: %v", pe.Line, pe.Err)})
				continue
			}
			return nil, err
		}
		if first && len(rec) > 0 && strings.EqualFold(strings.TrimSpace(rec[0]), "appid") {
			continue // header
		}
		r := &importFileRow{pos: line}
		switch {
		case len(rec) == 1 && strings.TrimSpace(rec[0]) == "":
			continue // blank line
		case len(rec) < 2 || len(rec) > 3:
			r.row.AppID = strings.TrimSpace(rec[0])
			r.err = fmt.Sprintf("CSV line %d: %d field(s), want appid,authorizer_refresh_token[,refresh_expires_at]", line, len(rec))
		default:
			r.row.AppID = strings.TrimSpace(rec[0])
			r.row.RefreshToken = strings.TrimSpace(rec[1])
			if len(rec) == 3 {
				t, err := parseExpiry(rec[2])
				if err != nil {
					r.err = fmt.Sprintf("CSV line %d: %v", line, err)
				}
				r.row.RefreshExpiresAt = flexTime{t}
			}
		}
		rows = append(rows, r)
	}
}
