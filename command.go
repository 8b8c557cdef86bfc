package tptoken

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// The `caddy tptoken` command: status, import, refresh and recover through the
// running instance's admin API (admin.api.tptoken). It never prints a token.

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "tptoken",
		Usage: "status|import|refresh|recover|auth-link [--address <interface>] [--component <appid>] [--json]",
		Short: "Shows and steers tptoken authorizers of the running Caddy",
		Long: `
Operates the tptoken app of a running Caddy through its admin API
(routes under /tptoken/; the admin endpoint must be enabled).

  caddy tptoken status [<appid>]       component state and the authorizer table,
                                        or one authorizer in detail
  caddy tptoken import <file|->        take over refresh tokens from a legacy store
                                        (JSON array or CSV: appid,authorizer_refresh_token[,refresh_expires_at])
  caddy tptoken refresh <appid>...     renew the tokens now
  caddy tptoken recover <appid>...     retrieve a new authorization code and exchange it
  caddy tptoken auth-link --redirect-uri <url>
                                        an authorization link for a merchant (signed state)

The admin address comes from --address, else from the admin setting of the
--config file, else Caddy's default (localhost:2019). With several components
(TPs), name one with --component. --json prints the API's JSON.
`,
		CobraFunc: configureCommand,
	})
}

// configureCommand adds the subcommands and their flags to the tptoken command.
func configureCommand(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.String("address", "", "Address of the admin API, if not the one in --config or the default")
	pf.StringP("config", "c", "", "Configuration file to read the admin address from, if --address is not used")
	pf.StringP("adapter", "a", "", "Name of the config adapter (with --config)")
	pf.String("component", "", "Component (TP) appid, when several are configured")
	pf.Bool("json", false, "Print JSON instead of tables")

	status := &cobra.Command{
		Use:   "status [<appid>]",
		Short: "Shows component state and authorizers (no token is ever shown)",
		Args:  cobra.MaximumNArgs(1),
		RunE:  runWith(cmdStatus),
	}
	status.Flags().String("state", "", "Only authorizers in this state (active, needs_recovery, unauthorized)")
	status.Flags().Int("limit", 0, "Show at most this many authorizers (0: all)")

	imp := &cobra.Command{
		Use:   "import <file|->",
		Short: "Imports refresh tokens from a legacy store (JSON or CSV)",
		Long: `
Imports authorizer refresh tokens exported from a legacy token store. Each token
is verified by one refresh under the authorizer's lock; a token the platform
rejects is recovered (retrieve code + exchange) when the authorization still
exists. Rows are reported one by one: imported, recovered, unchanged (imported
before), skipped (already active in tptoken) or failed. Importing the same file
again changes nothing.

The file is a JSON array of {"appid", "authorizer_refresh_token",
"refresh_expires_at"?} or CSV rows appid,authorizer_refresh_token[,refresh_expires_at]
(an optional header row, '#' comments). refresh_expires_at is RFC 3339 or Unix
seconds. Stop the legacy refresher for these authorizers first: a refresh by
both systems burns the token chain.
`,
		Args: cobra.ExactArgs(1),
		RunE: runWith(cmdImport),
	}
	imp.Flags().String("format", "", "json or csv (default: from the file extension, else guessed from the content)")
	imp.Flags().Int("batch", 50, "Rows per admin API request (at most 1000)")

	refresh := &cobra.Command{
		Use:   "refresh <appid>...",
		Short: "Renews authorizer tokens now (single-flight, under the storage lock)",
		Args:  cobra.MinimumNArgs(1),
		RunE:  runWith(cmdAction("refresh")),
	}
	recov := &cobra.Command{
		Use:   "recover <appid>...",
		Short: "Recovers authorizers: retrieves a new authorization code and exchanges it",
		Args:  cobra.MinimumNArgs(1),
		RunE:  runWith(cmdAction("recover")),
	}
	for _, sub := range []*cobra.Command{status, imp, refresh, recov, authLinkCommand()} {
		sub.SilenceUsage = true
		cmd.AddCommand(sub)
	}
}

// runWith adapts a command function writing to the command's output to
// cobra, through Caddy's wrapper (exit codes, error logging).
func runWith(f func(fl caddycmd.Flags, out io.Writer) (int, error)) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		return caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) {
			return f(fl, cmd.OutOrStdout())
		})(cmd, args)
	}
}

// adminClient calls the tptoken admin routes of one running Caddy.
type adminClient struct {
	addr      string
	component string
}

func newAdminClient(fl caddycmd.Flags) (*adminClient, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return nil, fmt.Errorf("couldn't determine the admin API address: %v", err)
	}
	comp := fl.String("component")
	if comp != "" && !tokensource.ValidAppID(comp) {
		return nil, fmt.Errorf("--component %q: want a component appid", comp)
	}
	return &adminClient{addr: addr, component: comp}, nil
}

// do sends a request (body marshalled as JSON when non-nil) and decodes the
// JSON answer into out (when non-nil).
func (c *adminClient) do(method, path string, query url.Values, body, out any) error {
	if c.component != "" {
		if query == nil {
			query = url.Values{}
		}
		query.Set("component", c.component)
	}
	uri := path
	if len(query) > 0 {
		uri += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	resp, err := caddycmd.AdminAPIRequest(c.addr, method, uri, nil, rd)
	if err != nil {
		err = adminErrorText(err)
		if strings.Contains(err.Error(), "several components are configured") {
			err = fmt.Errorf("%v (here: --component <appid>)", err)
		}
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("reading the admin API answer to %s %s: %v", method, path, err)
	}
	return nil
}

var adminErrorRE = regexp.MustCompile(`(?s)caddy responded with error: HTTP (\d+): (.*)$`)

// adminErrorText turns AdminAPIRequest's error (which quotes the raw JSON
// answer) into "HTTP <status>: <message>".
func adminErrorText(err error) error {
	m := adminErrorRE.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	var body struct {
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(m[2]), &body) == nil && body.Error != "" {
		return fmt.Errorf("HTTP %s: %s", m[1], body.Error)
	}
	return fmt.Errorf("HTTP %s: %s", m[1], strings.TrimSpace(m[2]))
}

func printJSON(out io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "%s\n", b)
	return err
}

// status

// statusJSON is what `status --json` prints.
type statusJSON struct {
	Components  []componentStatus             `json:"components"`
	Authorizers map[string][]tokensource.Info `json:"authorizers"` // by component appid
}

func cmdStatus(fl caddycmd.Flags, out io.Writer) (int, error) {
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	asJSON := fl.Bool("json")
	if args := fl.Args(); len(args) == 1 {
		return showAuthorizer(c, args[0], asJSON, out)
	}
	state := fl.String("state")
	limit := fl.Int("limit")

	var comps componentsAnswer
	if err := c.do(http.MethodGet, "/tptoken/component", nil, nil, &comps); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	res := statusJSON{Components: comps.Components, Authorizers: map[string][]tokensource.Info{}}
	for _, comp := range comps.Components {
		cc := &adminClient{addr: c.addr, component: comp.ComponentAppID}
		infos, err := cc.listAll(state, limit)
		if err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		res.Authorizers[comp.ComponentAppID] = infos
	}
	if asJSON {
		return caddy.ExitCodeSuccess, printJSON(out, res)
	}
	now := time.Now()
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "COMPONENT\tAPI\tTICKET AGE\tCOMPONENT TOKEN\tLAST SWEEP\tACTIVE\tNEEDS RECOVERY\tUNAUTHORIZED\tEARLIEST REFRESH EXPIRY")
	for _, s := range comps.Components {
		ticket := "none"
		if !s.TicketReceivedAt.IsZero() {
			ticket = shortDuration(now.Sub(s.TicketReceivedAt))
		}
		active, recov, unauth, sweep, earliest := "-", "-", "-", "never", "-"
		if s.Sweep != nil {
			active = strconv.Itoa(s.Sweep.ByState[tokensource.StateActive])
			recov = strconv.Itoa(s.Sweep.ByState[tokensource.StateNeedsRecovery])
			unauth = strconv.Itoa(s.Sweep.ByState[tokensource.StateUnauthorized])
			sweep = relTime(s.Sweep.At, now)
			if !s.Sweep.EarliestRefreshExp.IsZero() {
				earliest = relTime(s.Sweep.EarliestRefreshExp, now) + " (" + s.Sweep.EarliestRefreshApp + ")"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ComponentAppID, s.Family, ticket,
			expiresText(s.TokenExpiry, now), sweep, active, recov, unauth, earliest)
	}
	if err := tw.Flush(); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	for _, s := range comps.Components {
		infos := res.Authorizers[s.ComponentAppID]
		fmt.Fprintf(out, "\nAuthorizers of %s: %d shown\n", s.ComponentAppID, len(infos))
		if len(infos) == 0 {
			continue
		}
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "APPID\tSTATE\tAPI\tGEN\tACCESS TOKEN\tREFRESH TOKEN\tLAST REFRESH\tLAST ERROR")
		for _, in := range infos {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", in.AppID, stateText(in), in.Family, in.Generation,
				expiresText(in.AccessExpiry, now), expiresText(in.RefreshExpiry, now), relTime(in.LastRefresh, now), lastErrorText(in.LastError, now))
		}
		if err := tw.Flush(); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
	}
	return caddy.ExitCodeSuccess, nil
}

// listAll pages through the authorizers (in state, when given), up to limit (0: all).
func (c *adminClient) listAll(state string, limit int) ([]tokensource.Info, error) {
	out := []tokensource.Info{}
	after := ""
	for {
		q := url.Values{"limit": {strconv.Itoa(maxListLimit)}}
		if after != "" {
			q.Set("after", after)
		}
		var page authorizerList
		if err := c.do(http.MethodGet, "/tptoken/authorizers", q, nil, &page); err != nil {
			return nil, err
		}
		for _, in := range page.Authorizers {
			if state != "" && string(in.State) != state {
				continue
			}
			out = append(out, in)
			if limit > 0 && len(out) == limit {
				return out, nil
			}
		}
		if page.Next == "" {
			return out, nil
		}
		after = page.Next
	}
}

func showAuthorizer(c *adminClient, appid string, asJSON bool, out io.Writer) (int, error) {
	if !tokensource.ValidAppID(appid) {
		return caddy.ExitCodeFailedStartup, tokensource.CheckAppID(appid)
	}
	var in tokensource.Info
	if err := c.do(http.MethodGet, "/tptoken/authorizers/"+appid, nil, nil, &in); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if asJSON {
		return caddy.ExitCodeSuccess, printJSON(out, in)
	}
	printInfo(out, in, time.Now())
	return caddy.ExitCodeSuccess, nil
}

func printInfo(out io.Writer, in tokensource.Info, now time.Time) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("appid", in.AppID)
	row("state", stateText(in))
	row("api", string(in.Family))
	row("generation", strconv.FormatUint(in.Generation, 10))
	row("access token", expiresText(in.AccessExpiry, now)+timeText(in.AccessExpiry))
	row("refresh token", expiresText(in.RefreshExpiry, now)+timeText(in.RefreshExpiry))
	row("last refresh", relTime(in.LastRefresh, now)+timeText(in.LastRefresh))
	row("authorized", relTime(in.AuthorizedAt, now)+timeText(in.AuthorizedAt))
	row("updated", relTime(in.UpdatedAt, now)+timeText(in.UpdatedAt))
	row("last error", lastErrorText(in.LastError, now))
	perms := make([]string, 0, len(in.Permissions))
	for _, p := range in.Permissions {
		s := strconv.Itoa(p.ID)
		if p.Category != "" {
			s += " " + p.Category
		}
		perms = append(perms, s)
	}
	if len(perms) == 0 {
		perms = []string{"-"}
	}
	row("permissions", strings.Join(perms, ", "))
	_ = tw.Flush()
}

// refresh / recover

// actionResult is one line of `refresh` / `recover --json`.
type actionResult struct {
	AppID      string            `json:"appid"`
	OK         bool              `json:"ok"`
	Authorizer *tokensource.Info `json:"authorizer,omitempty"`
	Error      string            `json:"error,omitempty"`
}

func cmdAction(action string) func(caddycmd.Flags, io.Writer) (int, error) {
	return func(fl caddycmd.Flags, out io.Writer) (int, error) {
		c, err := newAdminClient(fl)
		if err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		var results []actionResult
		failed := 0
		for _, appid := range fl.Args() {
			r := actionResult{AppID: appid}
			var in tokensource.Info
			err := tokensource.CheckAppID(appid)
			if err == nil {
				err = c.do(http.MethodPost, "/tptoken/authorizers/"+appid+"/"+action, nil, nil, &in)
			}
			if err != nil {
				r.Error = err.Error()
				failed++
			} else {
				r.OK, r.Authorizer = true, &in
			}
			results = append(results, r)
		}
		if fl.Bool("json") {
			if err := printJSON(out, results); err != nil {
				return caddy.ExitCodeFailedStartup, err
			}
		} else {
			now := time.Now()
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "APPID\tRESULT\tSTATE\tGEN\tACCESS TOKEN\tREFRESH TOKEN\tDETAIL")
			for _, r := range results {
				if !r.OK {
					fmt.Fprintf(tw, "%s\tfailed\t-\t-\t-\t-\t%s\n", r.AppID, r.Error)
					continue
				}
				in := r.Authorizer
				fmt.Fprintf(tw, "%s\tok\t%s\t%d\t%s\t%s\t%s\n", r.AppID, stateText(*in), in.Generation,
					expiresText(in.AccessExpiry, now), expiresText(in.RefreshExpiry, now), lastErrorText(in.LastError, now))
			}
			if err := tw.Flush(); err != nil {
				return caddy.ExitCodeFailedStartup, err
			}
		}
		if failed > 0 {
			return 1, fmt.Errorf("%s failed for %d of %d authorizers", action, failed, len(results))
		}
		return caddy.ExitCodeSuccess, nil
	}
}

// import

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

func cmdImport(fl caddycmd.Flags, out io.Writer) (int, error) {
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	batch := fl.Int("batch")
	if batch < 1 || batch > maxImportRows {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("--batch %d: want 1 to %d", batch, maxImportRows)
	}
	name := fl.Args()[0]
	var data []byte
	if name == "-" {
		data, err = io.ReadAll(io.LimitReader(os.Stdin, 256<<20))
	} else {
		data, err = os.ReadFile(name)
	}
	if err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("reading %s: %v", name, err)
	}
	rows, err := parseImportFile(name, fl.String("format"), data)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if len(rows) == 0 {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("%s holds no rows", name)
	}

	res := importJSON{File: name, Counts: map[string]int{}}
	var pending []*importFileRow
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		body := make([]importRow, len(pending))
		for i, r := range pending {
			body[i] = r.row
		}
		var ans importAnswer
		if err := c.do(http.MethodPost, "/tptoken/import", nil, body, &ans); err != nil {
			return fmt.Errorf("importing rows %d-%d: %v", pending[0].pos, pending[len(pending)-1].pos, err)
		}
		if len(ans.Results) != len(pending) {
			return fmt.Errorf("importing rows %d-%d: the admin API answered %d results for %d rows",
				pending[0].pos, pending[len(pending)-1].pos, len(ans.Results), len(pending))
		}
		for i, r := range ans.Results {
			r.Row = pending[i].pos
			res.Results = append(res.Results, r)
		}
		pending = pending[:0]
		return nil
	}
	var sendErr error
	for _, r := range rows {
		if r.err != "" {
			res.Results = append(res.Results, importRowResult{Row: r.pos,
				ImportResult: tokensource.ImportResult{AppID: r.row.AppID, Result: "failed", Detail: r.err}})
			continue
		}
		pending = append(pending, r)
		if len(pending) == batch {
			if sendErr = flush(); sendErr != nil {
				break
			}
		}
	}
	if sendErr == nil {
		sendErr = flush()
	}
	sort.SliceStable(res.Results, func(i, j int) bool { return res.Results[i].Row < res.Results[j].Row })
	failed := 0
	for _, r := range res.Results {
		res.Counts[r.Result]++
		if r.Result == "failed" {
			failed++
		}
	}
	if fl.Bool("json") {
		if err := printJSON(out, res); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
	} else {
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ROW\tAPPID\tRESULT\tSTATE\tGEN\tDETAIL")
		for _, r := range res.Results {
			state, gen := "-", "-"
			if r.Info != nil {
				state, gen = string(r.Info.State), strconv.FormatUint(r.Info.Generation, 10)
			}
			detail := r.Detail
			if detail == "" {
				detail = "-"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.Row, orDash(r.AppID), r.Result, state, gen, detail)
		}
		_ = tw.Flush()
		fmt.Fprintf(out, "\n%s\n", countsText(res.Counts, len(rows)))
	}
	if sendErr != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("%v (rows before it were imported; importing the file again is safe)", sendErr)
	}
	if failed > 0 {
		return 1, fmt.Errorf("%d of %d rows failed: see the DETAIL column; fix them and import the file again (done rows stay unchanged)", failed, len(rows))
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
			if json.Unmarshal(m, &peek) == nil && tokensource.ValidAppID(peek.AppID) {
				r.row.AppID = peek.AppID
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

// Table formatting.

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func stateText(in tokensource.Info) string {
	s := string(in.State)
	if s == "" {
		s = "unknown"
	}
	if in.Unsaved {
		s += " (UNSAVED)"
	}
	return s
}

func lastErrorText(le *tokensource.LastError, now time.Time) string {
	if le == nil {
		return "-"
	}
	s := le.Op + ": " + le.Message
	if le.LogID != "" && !strings.Contains(le.Message, le.LogID) {
		s += " (log_id " + le.LogID + ")"
	}
	return s + ", " + relTime(le.At, now)
}

// expiresText says when t is, relative to now ("in 1h59m", "expired 3m ago").
func expiresText(t, now time.Time) string {
	switch {
	case t.IsZero():
		return "-"
	case t.After(now):
		return "in " + shortDuration(t.Sub(now))
	}
	return "expired " + shortDuration(now.Sub(t)) + " ago"
}

// relTime says when t was or will be, relative to now.
func relTime(t, now time.Time) string {
	switch {
	case t.IsZero():
		return "-"
	case t.After(now.Add(time.Second)):
		return "in " + shortDuration(t.Sub(now))
	}
	return shortDuration(now.Sub(t)) + " ago"
}

func timeText(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return " (" + t.UTC().Format(time.RFC3339) + ")"
}

// shortDuration prints d with its two largest units: 45s, 3m12s, 1h59m, 29d23h.
func shortDuration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	d = d.Round(time.Second)
	day := 24 * time.Hour
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < day:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return fmt.Sprintf("%dd%02dh", int(d/day), int(d%day/time.Hour))
}
