package tptoken

import (
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// `caddy tptoken auth-link`: an authorization link for a merchant, through the
// running instance's admin API (POST /tptoken/auth-link).

func authLinkCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "auth-link --redirect-uri <url>",
		Short: "Makes an authorization link whose redirect carries a signed, expiring state",
		Long: `
Asks the platform for an authorization link for a merchant: a pre_auth_code and a
hand-built link (default), or a link from the gen_link API (--gen-link). The
link's redirect_uri (--redirect-uri: the tptoken_events site, on the TP's
授权域名) carries a state signed with a key derived from the component_appsecret,
valid until the link expires (plus 10 minutes), so tptoken_events can tell the
redirect that follows from a request anyone could send; with require_state it
exchanges only those. --state query puts the state in the tptoken_state query
parameter instead of the last path segment; --state none leaves it out.

A hand-built link must be opened from a page on the 授权域名 (the platform checks
the referrer): put it on such a page rather than sending it as is.
`,
		Args: cobra.NoArgs,
		RunE: runWith(cmdAuthLink),
	}
	f := cmd.Flags()
	f.String("redirect-uri", "", "Where the platform sends the merchant's browser (the tptoken_events site)")
	f.Bool("gen-link", false, "Ask the platform for the link (gen_link) instead of building it from a pre_auth_code")
	f.Int("type", 1, "1: authorize an existing mini-app; 2: create a mini-app and authorize it (needs --app-name)")
	f.String("app-name", "", "Name of the mini-app to create (--type 2)")
	f.String("app-icon", "", "Icon of the mini-app to create (a path from the platform's upload API)")
	f.String("state", "path", "Where the state goes in the redirect_uri: path, query or none")
	return cmd
}

func cmdAuthLink(fl caddycmd.Flags, cio cliIO) (int, error) {
	out := cio.out
	if err := oneOf("state", fl.String("state"), "path", "query", "none"); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if t := fl.Int("type"); t != 1 && t != 2 {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("--type %d: use 1 (authorize an existing mini-app) or 2 (create and authorize)", t)
	}
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	req := authLinkRequest{RedirectURI: fl.String("redirect-uri"), LinkType: fl.Int("type"),
		AppName: fl.String("app-name"), AppIcon: fl.String("app-icon"), State: fl.String("state")}
	if fl.Bool("gen-link") {
		req.Method = "gen_link"
	}
	var ans authLinkAnswer
	if err := c.do(http.MethodPost, "/tptoken/auth-link", nil, req, &ans); err != nil {
		return 1, fmt.Errorf("auth-link: %v", err)
	}
	if fl.Bool("json") {
		if err := printJSON(out, ans); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		return caddy.ExitCodeSuccess, nil
	}
	fmt.Fprintf(out, "%s\n\n", ans.Link)
	fmt.Fprintf(out, "component:    %s\nmethod:       %s\nexpires:      %s\n", ans.ComponentAppID, ans.Method, ans.ExpiresAt.Local().Format(time.RFC3339))
	if ans.RedirectURI != "" {
		fmt.Fprintf(out, "redirect_uri: %s\n", ans.RedirectURI)
	}
	if !ans.StateExpiresAt.IsZero() {
		fmt.Fprintf(out, "state valid until %s\n", ans.StateExpiresAt.Local().Format(time.RFC3339))
	}
	return caddy.ExitCodeSuccess, nil
}
