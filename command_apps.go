package tptoken

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// `caddy tptoken apps` and `caddy tptoken refresh --app`: apps' own tokens
// through the admin API (admin_apps.go). An appid argument reaches a URL
// (which Caddy logs) only once the list of configured apps holds it; an
// unknown one is named by its fingerprint.

func appsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "apps [<appid> [<kind>]]",
		Short: "Shows apps' own tokens (client_token, app_access_token): state, never the value",
		Long: `
Shows the state of the app tokens tptoken keeps (the app blocks of the tptoken
global option): generation (fetches so far, across instances), expiry, the
last fetch and its error, this instance's backoff. With an appid, that app's
tokens; with a kind too, that one in detail. Fetch one now with
caddy tptoken refresh --app <appid> [--kind <kind>].
`,
		Args: cobra.MaximumNArgs(2),
		RunE: runWith(cmdApps),
	}
}

func cmdApps(fl caddycmd.Flags, cio cliIO) (int, error) {
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	args := fl.Args()
	if len(args) == 2 {
		if err := oneOf("kind", args[1], appKinds...); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
	}
	ans, err := c.apps(args...)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if fl.Bool("json") {
		return caddy.ExitCodeSuccess, printJSON(cio.out, ans)
	}
	now := time.Now()
	if len(args) == 2 && len(ans.Apps) == 1 {
		printAppStatus(cio.out, ans.Apps[0], now)
		return caddy.ExitCodeSuccess, nil
	}
	return caddy.ExitCodeSuccess, printAppTable(cio.out, ans.Apps, now)
}

// apps lists the configured app tokens, of the app (and kind) in filter.
func (c *adminClient) apps(filter ...string) (appsAnswer, error) {
	var all appsAnswer
	if err := c.do(http.MethodGet, "/tptoken/apps", nil, nil, &all); err != nil {
		return all, err
	}
	if len(filter) == 0 {
		return all, nil
	}
	ans := appsAnswer{Apps: []appStatus{}}
	for _, s := range all.Apps {
		if s.AppID == filter[0] && (len(filter) == 1 || s.Kind == filter[1]) {
			ans.Apps = append(ans.Apps, s)
		}
	}
	if len(ans.Apps) == 0 {
		what := "no app with this appid (fingerprint " + tokensource.Secret(filter[0]).Fingerprint() + ")"
		if len(filter) == 2 {
			for _, s := range all.Apps {
				if s.AppID == filter[0] {
					what = "app " + filter[0] + " has no " + filter[1]
				}
			}
		}
		return ans, errors.New(what + " configured; see caddy tptoken apps")
	}
	return ans, nil
}

// appPath is "/<appid>[/<kind>...]" with each part escaped ("" for none).
func appPath(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		b.WriteString("/" + url.PathEscape(p))
	}
	return b.String()
}

func printAppTable(out io.Writer, apps []appStatus, now time.Time) error {
	if len(apps) == 0 {
		_, err := fmt.Fprintln(out, "no app tokens are configured (app blocks of the tptoken global option)")
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "APP\tTOKEN\tGEN\tEXPIRES\tREFRESH AT\tLAST FETCH\tBACKOFF\tLAST ERROR")
	for _, s := range apps {
		backoff := "-"
		if !s.BackoffUntil.IsZero() {
			backoff = "until " + relTime(s.BackoffUntil, now)
		}
		kind := s.Kind
		if s.Unsaved {
			kind += " (UNSAVED)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", s.AppID, kind, s.Generation, expiresText(s.Expiry, now),
			relTime(s.RefreshAt, now), relTime(s.LastFetch, now), backoff, lastErrorText(s.LastError, now))
	}
	return tw.Flush()
}

func printAppStatus(out io.Writer, s appStatus, now time.Time) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("app", s.AppID)
	row("token", s.Kind)
	row("endpoint", s.Endpoint)
	row("generation", strconv.FormatUint(s.Generation, 10))
	row("issued", relTime(s.Issued, now)+timeText(s.Issued))
	row("expires", expiresText(s.Expiry, now)+timeText(s.Expiry))
	row("refresh at", relTime(s.RefreshAt, now)+timeText(s.RefreshAt))
	row("last fetch", relTime(s.LastFetch, now)+timeText(s.LastFetch))
	row("last error", lastErrorText(s.LastError, now))
	row("backoff until", relTime(s.BackoffUntil, now)+timeText(s.BackoffUntil))
	row("last used here", relTime(s.LastUsed, now))
	row("grace", shortDuration(time.Duration(s.GraceSeconds*float64(time.Second))))
	if s.Unsaved {
		row("UNSAVED", "the newest token is in this instance's memory only (storage writes failing)")
	}
	_ = tw.Flush()
}

// cmdRefreshApp is `caddy tptoken refresh --app <appid> [--kind <kind>]`.
func cmdRefreshApp(fl caddycmd.Flags, cio cliIO) (int, error) {
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if len(fl.Args()) > 0 {
		return caddy.ExitCodeFailedStartup, errors.New("refresh --app takes no authorizer appids: refresh --app <appid> [--kind <kind>]")
	}
	appid, filter := fl.String("app"), []string{fl.String("app")}
	if k := fl.String("kind"); k != "" {
		if err := oneOf("kind", k, appKinds...); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		filter = append(filter, k)
	}
	ans, err := c.apps(filter...) // confirms the app before it is put in a URL
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	var kinds []string
	for _, s := range ans.Apps {
		kinds = append(kinds, s.Kind)
	}
	var done []appStatus
	var failed []string
	for _, k := range kinds {
		var ans appRefreshAnswer
		if err := c.do(http.MethodPost, "/tptoken/apps"+appPath(appid, k, "refresh"), nil, nil, &ans); err != nil {
			failed = append(failed, k+": "+err.Error())
			continue
		}
		done = append(done, ans.appStatus)
	}
	if fl.Bool("json") {
		if err := printJSON(cio.out, map[string]any{"refreshed": done, "failed": failed}); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
	} else {
		if err := printAppTable(cio.out, done, time.Now()); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		for _, s := range done {
			fmt.Fprintf(cio.out, "%s %s: the previous token still works %s (the platform's grace)\n", s.AppID, s.Kind,
				shortDuration(time.Duration(s.GraceSeconds*float64(time.Second))))
		}
		for _, f := range failed {
			fmt.Fprintln(cio.out, "failed: "+f)
		}
	}
	if len(failed) > 0 {
		return 1, fmt.Errorf("refresh failed for %d of %d tokens of app %s", len(failed), len(kinds), appid)
	}
	return caddy.ExitCodeSuccess, nil
}

// appHealth is what status --check finds wrong with app tokens: one that
// was fetched before but has no usable token now, and cannot get one.
func appHealth(apps []appStatus, now time.Time) []string {
	var problems []string
	for _, s := range apps {
		if s.Generation > 0 && !s.Expiry.After(now) && s.LastError != nil {
			problems = append(problems, fmt.Sprintf("app %s %s: expired %s ago and the last fetch failed: %s",
				s.AppID, s.Kind, shortDuration(now.Sub(s.Expiry)), s.LastError.Message))
		}
	}
	return problems
}
