package tptoken

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// The `caddy tptoken` command operates the running instance through its admin
// API (admin.api.tptoken). It never prints a token, and never prints, nor puts
// in an admin URL (which Caddy logs), a value given as an appid until the admin
// API confirms a record of it: a token pasted in the wrong place, or an import
// file with swapped columns, is shown by its fingerprint only.
//
// Exit codes: 0 success; 1 failure (bad arguments, Caddy unreachable, an
// operation failed for some appid or row, a storage guarantee failed); 2
// `status --check` found the TP not healthy, or check-storage skipped a
// guarantee; 130 interrupted (import, rebuild: rerunning is safe).

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "tptoken",
		Usage: "<subcommand> [--address <interface>] [--component <appid>] [--json]",
		Short: "Shows and steers tptoken authorizers of the running Caddy",
		Long: `
Operates the tptoken app of a running Caddy through its admin API
(routes under /tptoken/; the admin endpoint must be enabled).

  caddy tptoken status [<appid>] [--check]  component state, the app tokens and the authorizer
                                            table, one authorizer in detail, or a health check
  caddy tptoken apps [<appid> [<kind>]]     apps' own tokens (client_token, app_access_token)
  caddy tptoken import <file|->             take over refresh tokens from a legacy store
                                            (JSON array or CSV: appid,authorizer_refresh_token[,refresh_expires_at])
  caddy tptoken refresh <appid>...          renew the tokens now
  caddy tptoken refresh --app <appid> [--kind <kind>]
                                            fetch an app's own token now
  caddy tptoken recover <appid>... [--new]  retrieve a new authorization code and exchange it
  caddy tptoken seed-code [--appid <appid>] exchange an authorization code read from standard input
  caddy tptoken delete <appid>... --yes     forget authorizers (their refresh tokens are lost)
  caddy tptoken reseal                      seal every record with the current encryption_key
  caddy tptoken rebuild [<appid>...]        restore every authorizer without a usable record from the
                                            platform's authorized-app list (storage lost, old backup)
  caddy tptoken auth-link --redirect-uri <url>
                                            an authorization link for a merchant (signed state)
  caddy tptoken check-storage [--hold 12s]  check the storage's locks, visibility and listing

The admin address comes from --address, else from the admin setting of the
--config file, else Caddy's default (localhost:2019). With several components
(TPs), the component of an appid is found by itself; name one with --component
where it cannot be (a new authorizer, an import). --json prints the API's JSON.

Exit status: 0 success, 1 failure, 2 status --check found the TP not healthy
(check-storage: a guarantee was skipped), 130 interrupted (import and rebuild
can be run again safely).
`,
		CobraFunc: configureCommand,
	})
}

// subcommands build the `caddy tptoken` subcommands, in the order of the help.
var subcommands = []func() *cobra.Command{
	statusCommand,
	appsCommand,
	importCommand,
	refreshCommand,
	recoverCommand,
	seedCodeCommand,
	deleteCommand,
	resealCommand,
	rebuildCommand,
	authLinkCommand,
	checkStorageCommand,
	checkStorageHolderCommand,
}

// configureCommand adds the subcommands and their flags to the tptoken command.
func configureCommand(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.String("address", "", "Address of the admin API, if not the one in --config or the default")
	pf.StringP("config", "c", "", "Configuration file to read the admin address from, if --address is not used")
	pf.StringP("adapter", "a", "", "Name of the config adapter (with --config)")
	pf.String("component", "", "Component (TP) appid, when several are configured and the appid does not tell")
	pf.Bool("json", false, "Print JSON instead of tables")

	// Without a known subcommand: fail, naming the valid ones (cobra would
	// print the help and exit 0, which a script takes for success).
	var names []string
	for _, build := range subcommands {
		sub := build()
		sub.SilenceUsage = true
		cmd.AddCommand(sub)
		if !sub.Hidden {
			names = append(names, sub.Name())
		}
	}
	cmd.Args = cobra.ArbitraryArgs
	cmd.SilenceUsage = true
	cmd.SuggestionsMinimumDistance = 2
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return fmt.Errorf("a subcommand is required: %s (caddy help tptoken)", strings.Join(names, ", "))
		}
		hint := ""
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			hint = "; did you mean " + strings.Join(s, " or ") + "?"
		}
		return fmt.Errorf("unknown subcommand %q: use one of %s%s", args[0], strings.Join(names, ", "), hint)
	}
}

// cliIO is where a subcommand reads input and writes its output; errOut
// (standard error) gets the progress line of long commands.
type cliIO struct {
	in     io.Reader
	out    io.Writer
	errOut io.Writer
}

// runWith adapts a subcommand function to cobra, through Caddy's wrapper
// (exit codes, error logging).
func runWith(f func(fl caddycmd.Flags, io cliIO) (int, error)) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		return caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) {
			return f(fl, cliIO{in: cmd.InOrStdin(), out: cmd.OutOrStdout(), errOut: cmd.ErrOrStderr()})
		})(cmd, args)
	}
}

// oneOf checks a flag value against its valid values.
func oneOf(flag, v string, valid ...string) error {
	for _, ok := range valid {
		if v == ok {
			return nil
		}
	}
	return fmt.Errorf("--%s %q: use one of %s", flag, v, strings.Join(valid, ", "))
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
		return nil, fmt.Errorf("--component: want a component appid ("+appIDShape+"), got %d characters", len(comp))
	}
	return &adminClient{addr: addr, component: comp}, nil
}

// forComponent is c with the component set.
func (c *adminClient) forComponent(comp string) *adminClient {
	return &adminClient{addr: c.addr, component: comp}
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
	uri, rd, err := requestOf(path, query, body)
	if err != nil {
		return err
	}
	resp, err := caddycmd.AdminAPIRequest(c.addr, method, uri, nil, rd)
	if err != nil {
		err = adminErrorText(err, c.addr)
		if strings.Contains(err.Error(), "several components are configured") && !strings.Contains(err.Error(), "--component") {
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

// requestOf is the URI and body of an admin request (body marshalled as JSON
// when non-nil).
func requestOf(path string, query url.Values, body any) (string, io.Reader, error) {
	uri := path
	if len(query) > 0 {
		uri += "?" + query.Encode()
	}
	if body == nil {
		return uri, nil, nil
	}
	b, err := json.Marshal(body)
	if err != nil {
		return "", nil, err
	}
	return uri, bytes.NewReader(b), nil
}

var adminErrorRE = regexp.MustCompile(`(?s)caddy responded with error: HTTP (\d+): (.*)$`)

// adminErrorText turns AdminAPIRequest's error (which quotes the raw JSON
// answer) into "HTTP <status>: <message>", and a failure to reach the admin
// endpoint into what to check.
func adminErrorText(err error, addr string) error {
	m := adminErrorRE.FindStringSubmatch(err.Error())
	if m == nil {
		msg := err.Error()
		for _, cause := range []string{"connection refused", "no such file or directory", "no such host", "i/o timeout", "connection reset"} {
			if strings.Contains(msg, cause) {
				return fmt.Errorf("cannot reach Caddy's admin API at %s (%s): is Caddy running, and is that its admin address? "+
					"Give the address with --address, or the Caddyfile with --config to read it from (the `admin` global option; "+
					"default localhost:2019). With `admin off`, caddy tptoken cannot work", addr, cause)
			}
		}
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

// target is an appid argument resolved through the admin API: its component
// once a record of it is confirmed, or why it cannot be acted on.
type target struct {
	appid       string // confirmed appid; "" otherwise
	fingerprint string
	component   string
	problem     string // why not: "" when appid is set
}

// resolve confirms appid arguments and finds their components, asking the
// admin API with the appids in a request body (POST /tptoken/lookup), so that
// no unconfirmed value reaches a URL or an answer. An invalid or unknown
// appid gets a problem naming its fingerprint.
func (c *adminClient) resolve(args []string) ([]target, error) {
	out := make([]target, len(args))
	var ask []string
	for i, a := range args {
		out[i] = target{fingerprint: tokensource.Secret(a).Fingerprint()}
		if !tokensource.ValidAppID(a) {
			out[i].problem = tokensource.CheckAppID(a).Error()
			continue
		}
		ask = append(ask, a)
	}
	if len(ask) == 0 {
		return out, nil
	}
	var ans lookupAnswer
	if err := c.do(http.MethodPost, "/tptoken/lookup", nil, lookupRequest{AppIDs: ask}, &ans); err != nil {
		return nil, err
	}
	if len(ans.Results) != len(ask) {
		return nil, fmt.Errorf("the admin API answered %d lookups for %d appids", len(ans.Results), len(ask))
	}
	j := 0
	for i := range out {
		if out[i].problem != "" {
			continue
		}
		res := ans.Results[j]
		j++
		switch {
		case len(res.Components) == 0 && c.component != "":
			out[i].problem = fmt.Sprintf("no record of this appid (fingerprint %s) under component %s", out[i].fingerprint, c.component)
		case len(res.Components) == 0:
			out[i].problem = fmt.Sprintf("no record of this appid (fingerprint %s) under any component: check it", out[i].fingerprint)
		case len(res.Components) > 1:
			out[i].appid = res.AppID
			out[i].problem = fmt.Sprintf("records under several components (%s): name one with --component", strings.Join(res.Components, ", "))
		default:
			out[i].appid, out[i].component = res.AppID, res.Components[0]
		}
	}
	return out, nil
}

// status

// statusJSON is what `status --json` prints.
type statusJSON struct {
	Components  []componentStatus             `json:"components"`
	Authorizers map[string][]tokensource.Info `json:"authorizers,omitempty"` // by component appid
	// Apps are apps' own tokens (command_apps.go).
	Apps []appStatus `json:"apps,omitempty"`
	// Health is the verdict of --check.
	Health *healthJSON `json:"health,omitempty"`
}

type healthJSON struct {
	Healthy  bool     `json:"healthy"`
	Problems []string `json:"problems,omitempty"`
}

func statusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status [<appid>]",
		Short: "Shows component state and authorizers, or checks health (no token is ever shown)",
		Long: `
Shows each component (TP): ticket age, component token, the last sweep of
storage; then the authorizers (--state and --limit select them). With an appid,
shows that authorizer in detail.

--check is for probes and scripts: it shows the component table only and exits
2 unless every component (or the one named by --component) is healthy:
  - a component_ticket arrived within --max-ticket-age (default 30m; the
    platform pushes one every 10 minutes, each valid 3 hours);
  - a component token is on record and not expired;
  - the last sweep of storage (if one ran yet) read every authorizer record.
Problems of single authorizers (needs_recovery, unauthorized) do not fail the
check: they are one tenant's, not the TP's; see the authorizer table.
Exit status 1 means the check could not be made (for example, Caddy is not
reachable).
`,
		Args: cobra.MaximumNArgs(1),
		RunE: runWith(cmdStatus),
	}
	cmd.Flags().String("state", "", "Only authorizers in this state (active, needs_recovery, unauthorized)")
	cmd.Flags().Int("limit", 0, "Show at most this many authorizers (0: all)")
	cmd.Flags().Bool("check", false, "Exit 2 unless the TP is healthy (see above); shows no authorizer table")
	cmd.Flags().Duration("max-ticket-age", 30*time.Minute, "With --check: the oldest acceptable component_ticket")
	return cmd
}

var authorizerStates = []string{string(tokensource.StateActive), string(tokensource.StateNeedsRecovery), string(tokensource.StateUnauthorized)}

func cmdStatus(fl caddycmd.Flags, cio cliIO) (int, error) {
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	asJSON := fl.Bool("json")
	state := fl.String("state")
	if state != "" {
		if err := oneOf("state", state, authorizerStates...); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
	}
	limit := fl.Int("limit")
	if limit < 0 {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("--limit %d: want 0 (all) or more", limit)
	}
	check := fl.Bool("check")
	maxTicketAge, _ := fl.GetDuration("max-ticket-age")
	if maxTicketAge <= 0 {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("--max-ticket-age %s: want a positive duration", maxTicketAge)
	}
	if args := fl.Args(); len(args) == 1 {
		if check || state != "" || limit != 0 {
			return caddy.ExitCodeFailedStartup, errors.New("--check, --state and --limit apply to the whole status, not to one appid")
		}
		return showAuthorizer(c, args[0], asJSON, cio.out)
	}

	var comps componentsAnswer
	if err := c.do(http.MethodGet, "/tptoken/component", nil, nil, &comps); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	apps, err := c.apps()
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	res := statusJSON{Components: comps.Components, Apps: apps.Apps}
	now := time.Now()
	if check {
		h := checkHealth(comps.Components, maxTicketAge, now)
		if len(comps.Components) == 0 && len(apps.Apps) > 0 {
			h = healthJSON{} // an app-only configuration
		}
		h.Problems = append(h.Problems, appHealth(apps.Apps, now)...)
		h.Healthy = len(h.Problems) == 0
		res.Health = &h
	} else {
		res.Authorizers = map[string][]tokensource.Info{}
		for _, comp := range comps.Components {
			infos, err := c.forComponent(comp.ComponentAppID).listAll(state, limit)
			if err != nil {
				return caddy.ExitCodeFailedStartup, err
			}
			res.Authorizers[comp.ComponentAppID] = infos
		}
	}
	if asJSON {
		if err := printJSON(cio.out, res); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
	} else if err := printStatus(cio.out, res, now); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if res.Health != nil && !res.Health.Healthy {
		return 2, fmt.Errorf("not healthy: %s", strings.Join(res.Health.Problems, "; "))
	}
	return caddy.ExitCodeSuccess, nil
}

// checkHealth applies the --check rules to each component.
func checkHealth(comps []componentStatus, maxTicketAge time.Duration, now time.Time) healthJSON {
	var problems []string
	for _, s := range comps {
		id := s.ComponentAppID
		switch {
		case s.TicketReceivedAt.IsZero():
			problems = append(problems, id+": no component_ticket received yet (is the 授权事件接收 URL reaching tptoken_events?)")
		case now.Sub(s.TicketReceivedAt) > maxTicketAge:
			problems = append(problems, fmt.Sprintf("%s: the newest component_ticket is %s old (more than %s): pushes are not arriving", id, shortDuration(now.Sub(s.TicketReceivedAt)), maxTicketAge))
		}
		switch {
		case s.TokenExpiry.IsZero():
			problems = append(problems, id+": no component token on record")
		case !s.TokenExpiry.After(now):
			problems = append(problems, fmt.Sprintf("%s: the component token expired %s ago", id, shortDuration(now.Sub(s.TokenExpiry))))
		}
		if s.Sweep != nil && s.Sweep.Unreadable > 0 {
			problems = append(problems, fmt.Sprintf("%s: the last sweep could not read %d authorizer record(s) (wrong or missing encryption_key? see the log)", id, s.Sweep.Unreadable))
		}
	}
	if len(comps) == 0 {
		problems = append(problems, "no component is configured")
	}
	return healthJSON{Healthy: len(problems) == 0, Problems: problems}
}

func printStatus(out io.Writer, res statusJSON, now time.Time) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "COMPONENT\tAPI\tTICKET AGE\tCOMPONENT TOKEN\tLAST SWEEP\tACTIVE\tNEEDS RECOVERY\tUNAUTHORIZED\tEARLIEST REFRESH EXPIRY")
	for _, s := range res.Components {
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
		return err
	}
	if len(res.Apps) > 0 {
		fmt.Fprintln(out, "\nApp credentials:")
		if err := printAppTable(out, res.Apps, now); err != nil {
			return err
		}
	}
	for _, s := range res.Components {
		if r := s.Rebuild; r != nil {
			done := 0
			for _, n := range r.Counts {
				done += n
			}
			fmt.Fprintf(out, "%s: a rebuild (trigger %s) is running since %s: %d of %d authorizers done\n",
				s.ComponentAppID, r.Trigger, relTime(r.StartedAt, now), done, max(r.PlatformTotal, r.Listed, done))
		}
		if s.Sweep != nil && s.Sweep.NotSealedWithKey > 0 {
			fmt.Fprintf(out, "%s: %d authorizer record(s) not sealed with the current encryption_key yet (caddy tptoken reseal)\n",
				s.ComponentAppID, s.Sweep.NotSealedWithKey)
		}
	}
	if res.Health != nil {
		if res.Health.Healthy {
			fmt.Fprintln(out, "\nhealthy")
		} else {
			fmt.Fprintln(out, "\nNOT HEALTHY:")
			for _, p := range res.Health.Problems {
				fmt.Fprintln(out, "  "+p)
			}
		}
		return nil
	}
	for _, s := range res.Components {
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
			return err
		}
	}
	return nil
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
	ts, err := c.resolve([]string{appid})
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	t := ts[0]
	if t.problem != "" {
		return caddy.ExitCodeFailedStartup, errors.New(t.problem)
	}
	var in tokensource.Info
	if err := c.forComponent(t.component).do(http.MethodGet, "/tptoken/authorizers/"+t.appid, nil, nil, &in); err != nil {
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

// refresh / recover / delete

func refreshCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "refresh <appid>... | --app <appid> [--kind <kind>]",
		Short: "Renews authorizer tokens, or fetches an app's own token, now (under the storage lock)",
		Long: `
Renews the tokens of each authorizer now. Forced refreshes and recoveries are
limited to 3 per authorizer per 10 minutes, counted across all instances: over
that, the authorizer's line says when to try again (HTTP 429 from the admin API).

With --app, fetches that app's own tokens (every kind it keeps, or --kind's)
unless another instance fetched one meanwhile; the previous token keeps working
for the platform's grace (5 minutes). The same budget applies per app and kind.
`,
		Args: func(cmd *cobra.Command, args []string) error {
			if app, _ := cmd.Flags().GetString("app"); app != "" {
				return nil
			}
			return cobra.MinimumNArgs(1)(cmd, args)
		},
		RunE: runWith(func(fl caddycmd.Flags, cio cliIO) (int, error) {
			if fl.String("app") != "" {
				return cmdRefreshApp(fl, cio)
			}
			if fl.String("kind") != "" {
				return caddy.ExitCodeFailedStartup, errors.New("--kind goes with --app")
			}
			return cmdAction("refresh")(fl, cio)
		}),
	}
	cmd.Flags().String("app", "", "Fetch this app's own token(s) instead (an app block of the tptoken global option)")
	cmd.Flags().String("kind", "", "With --app: client_token or app_access_token (default: every kind the app keeps)")
	return cmd
}

func recoverCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "recover <appid>...",
		Short: "Recovers authorizers: retrieves a new authorization code and exchanges it",
		Long: `
Recovers each authorizer whose refresh token is lost: retrieves a new
authorization code (找回授权码) and exchanges it. Shares the budget of refresh
(3 forced operations per authorizer per 10 minutes).

An appid tptoken has no record of is refused, changing nothing. With --new it is
recovered if the platform says it is authorized to the TP (for example an
authorizer that authorized after the backup you restored); if not, nothing is
stored. --new sends the appid in an admin URL, which Caddy logs: use it with
appids you know.
`,
		Args: cobra.MinimumNArgs(1),
		RunE: runWith(cmdAction("recover")),
	}
	cmd.Flags().Bool("new", false, "Also recover appids with no record (the platform must know them)")
	return cmd
}

func deleteCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "delete <appid>... --yes",
		Short: "Forgets authorizers: their records and refresh tokens are deleted for good",
		Long: `
Deletes each authorizer's record. Its refresh token is lost: only a new
authorization (the AUTHORIZED push) or caddy tptoken recover --new brings it
back. --yes confirms.
`,
		Args: cobra.MinimumNArgs(1),
		RunE: runWith(cmdAction("delete")),
	}
	cmd.Flags().Bool("yes", false, "Confirm: the refresh tokens are lost")
	return cmd
}

// actionResult is one line of `refresh` / `recover` / `delete --json`.
type actionResult struct {
	AppID       string            `json:"appid,omitempty"`       // once confirmed
	Fingerprint string            `json:"fingerprint,omitempty"` // of an appid not confirmed
	OK          bool              `json:"ok"`
	Authorizer  *tokensource.Info `json:"authorizer,omitempty"`
	Error       string            `json:"error,omitempty"`
}

func cmdAction(action string) func(caddycmd.Flags, cliIO) (int, error) {
	return func(fl caddycmd.Flags, cio cliIO) (int, error) {
		c, err := newAdminClient(fl)
		if err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		allowNew := action == "recover" && fl.Bool("new")
		if action == "delete" && !fl.Bool("yes") {
			return caddy.ExitCodeFailedStartup, errors.New("delete forgets each authorizer's refresh token for good (only a new authorization brings it back): add --yes to confirm")
		}
		var targets []target
		if allowNew {
			// The operator says these are appids: no lookup (they have no record).
			for _, a := range fl.Args() {
				t := target{appid: a, fingerprint: tokensource.Secret(a).Fingerprint(), component: c.component}
				if err := tokensource.CheckAppID(a); err != nil {
					t.appid, t.problem = "", err.Error()
				}
				targets = append(targets, t)
			}
		} else if targets, err = c.resolve(fl.Args()); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		results := make([]actionResult, 0, len(targets))
		failed := 0
		for _, t := range targets {
			r := actionResult{AppID: t.appid}
			if t.appid == "" {
				r.Fingerprint = t.fingerprint
			}
			err := error(nil)
			if t.problem != "" {
				err = errors.New(t.problem)
			} else {
				err = runAction(c.forComponent(t.component), action, t.appid, allowNew, &r)
			}
			if err != nil {
				r.Error = err.Error()
				failed++
			} else {
				r.OK = true
			}
			results = append(results, r)
		}
		if fl.Bool("json") {
			if err := printJSON(cio.out, results); err != nil {
				return caddy.ExitCodeFailedStartup, err
			}
		} else if err := printActions(cio.out, results); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		if failed > 0 {
			return 1, fmt.Errorf("%s failed for %d of %d authorizers", action, failed, len(results))
		}
		return caddy.ExitCodeSuccess, nil
	}
}

// runAction runs one action on a confirmed appid (or one given with --new).
func runAction(c *adminClient, action, appid string, allowNew bool, r *actionResult) error {
	if action == "delete" {
		return c.do(http.MethodDelete, "/tptoken/authorizers/"+appid, nil, nil, nil)
	}
	var q url.Values
	if allowNew {
		q = url.Values{"new": {"1"}}
	}
	var in tokensource.Info
	if err := c.do(http.MethodPost, "/tptoken/authorizers/"+appid+"/"+action, q, nil, &in); err != nil {
		if allowNew {
			r.AppID, r.Fingerprint = "", tokensource.Secret(appid).Fingerprint() // not confirmed by the platform
		}
		return err
	}
	r.Authorizer = &in
	return nil
}

func printActions(out io.Writer, results []actionResult) error {
	now := time.Now()
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "APPID\tRESULT\tSTATE\tGEN\tACCESS TOKEN\tREFRESH TOKEN\tDETAIL")
	for _, r := range results {
		switch {
		case !r.OK:
			fmt.Fprintf(tw, "%s\tfailed\t-\t-\t-\t-\t%s\n", orDash(r.AppID), r.Error)
		case r.Authorizer == nil:
			fmt.Fprintf(tw, "%s\tok\t-\t-\t-\t-\tdeleted\n", r.AppID)
		default:
			in := r.Authorizer
			fmt.Fprintf(tw, "%s\tok\t%s\t%d\t%s\t%s\t%s\n", r.AppID, stateText(*in), in.Generation,
				expiresText(in.AccessExpiry, now), expiresText(in.RefreshExpiry, now), lastErrorText(in.LastError, now))
		}
	}
	return tw.Flush()
}

// seed-code

func seedCodeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "seed-code [--appid <appid>]",
		Short: "Exchanges an authorization code read from standard input",
		Long: `
Exchanges an authorization code (from the redirect of an authorization link,
or from the platform's console) and stores the authorizer it belongs to: the
way in for an authorizer whose AUTHORIZED push never arrived. The code is read
from standard input (the first line), so it stays out of the shell history and
the process list:

  printf '%s\n' "$CODE" | caddy tptoken seed-code

The platform's answer names the authorizer; --appid makes sure it is that one.
With several components, name the TP with --component.
`,
		Args: cobra.NoArgs,
		RunE: runWith(cmdSeedCode),
	}
	cmd.Flags().String("appid", "", "The authorizer the code must belong to")
	return cmd
}

func cmdSeedCode(fl caddycmd.Flags, cio cliIO) (int, error) {
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	appid := fl.String("appid")
	if appid != "" {
		if err := tokensource.CheckAppID(appid); err != nil {
			return caddy.ExitCodeFailedStartup, fmt.Errorf("--appid: %v", err)
		}
	}
	line, err := bufio.NewReader(io.LimitReader(cio.in, maxAdminBody)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("reading the code from standard input: %v", err)
	}
	code := strings.TrimSpace(line)
	if code == "" {
		return caddy.ExitCodeFailedStartup, errors.New("no code on standard input: printf '%s\\n' \"$CODE\" | caddy tptoken seed-code")
	}
	var in tokensource.Info
	if err := c.do(http.MethodPost, "/tptoken/code", nil, codeRequest{AuthorizationCode: code, AppID: appid}, &in); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if fl.Bool("json") {
		return caddy.ExitCodeSuccess, printJSON(cio.out, in)
	}
	printInfo(cio.out, in, time.Now())
	return caddy.ExitCodeSuccess, nil
}

// reseal

func resealCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "reseal",
		Short: "Seals every stored record with the current encryption_key",
		Long: `
Rewrites every record (authorizers, ticket, component tokens) that is plain or
sealed with one of previous_encryption_keys, sealing it with encryption_key:
the last step of a key rotation (docs/deployment.md). Records are rewritten
under their storage locks; running it again does nothing. With several
components, all are resealed unless --component names one.
`,
		Args: cobra.NoArgs,
		RunE: runWith(cmdReseal),
	}
}

func cmdReseal(fl caddycmd.Flags, cio cliIO) (int, error) {
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	var ans resealAnswer
	if err := c.do(http.MethodPost, "/tptoken/reseal", nil, nil, &ans); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if fl.Bool("json") {
		if err := printJSON(cio.out, ans); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
	} else {
		tw := tabwriter.NewWriter(cio.out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "COMPONENT\tKEY ID\tRESEALED\tALREADY CURRENT\tFAILED")
		for _, r := range ans.Components {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\n", r.ComponentAppID, r.KeyID, r.Resealed, r.Current, r.Failed)
		}
		_ = tw.Flush()
		for _, r := range ans.Components {
			for _, e := range r.Errors {
				fmt.Fprintf(cio.out, "%s: %s\n", r.ComponentAppID, e)
			}
		}
	}
	failed := 0
	for _, r := range ans.Components {
		failed += r.Failed
	}
	if failed > 0 {
		return 1, fmt.Errorf("%d record(s) could not be resealed: keep the previous keys configured and run reseal again", failed)
	}
	return caddy.ExitCodeSuccess, nil
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
