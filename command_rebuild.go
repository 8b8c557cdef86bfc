package tptoken

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// `caddy tptoken rebuild`: POST /tptoken/rebuild, streamed.

func rebuildCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rebuild [<appid>...]",
		Short: "Restores every authorizer without a usable record from the platform's authorized-app list",
		Long: `
Pages through the platform's authorized-app list and, for every authorizer
whose record is missing, damaged, or needs recovery (its refresh token lost,
spent or expired), retrieves a new authorization code (找回授权码) and
exchanges it, under the authorizer's storage lock: after the storage was lost,
no authorizer needs to authorize the TP again. A record in use is never
touched; with appids, only those are worked on.

Each authorizer ends with one result: rebuilt, unchanged, refreshed, recovered
(--verify), not_authorized (the platform says it is gone), skipped_unreadable
(sealed with an encryption_key this instance lacks), skipped_other_family,
busy (another instance held its lock: rerun), failed, not_listed (an appid
given that the platform does not list).

--verify also refreshes every active record once, recovering those whose
refresh token is spent: after restoring a storage backup.
--overwrite-unreadable rebuilds records this instance cannot decrypt: only if
the key they were sealed with is lost for good (while any instance has it,
they are its live authorizations).

Not while a legacy token store still serves some authorizers of the TP (a
migration): tptoken has no record of them, and the exchange kills the legacy
store's chain. Import them first, or name the appids to rebuild.

Running it again changes nothing for authorizers done; two instances running
it at once exchange each authorizer once. On a terminal a status line shows
the progress; Ctrl-C stops it (operations in flight finish on the server) and
it can be run again. --json prints one JSON document at the end.

Exit status: 0 every authorizer done, 1 some failed, were busy or unreadable
(see DETAIL), 130 interrupted.
`,
		RunE: runWith(cmdRebuild),
	}
	cmd.Flags().Bool("verify", false, "Also refresh every active record once, recovering spent refresh tokens (after restoring a backup)")
	cmd.Flags().Bool("overwrite-unreadable", false, "Rebuild records this instance cannot decrypt (only if their key is lost for good)")
	cmd.Flags().Float64("rate", 0, "Authorizers worked on per second (default: renew_rate; at most 10)")
	return cmd
}

// errInterrupted: the command was interrupted (Ctrl-C): exit 130.
var errInterrupted = errors.New("interrupted")

const exitInterrupted = 130

// interruptible is a context that ends at Ctrl-C or SIGTERM.
func interruptible() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// stream sends a request asking for NDJSON and calls f for each line as it
// arrives. When ctx ends it stops reading, closes the connection (the
// server stops what it had not begun) and returns errInterrupted.
func (c *adminClient) stream(ctx context.Context, method, path string, body any, f func(event string, line []byte) error) error {
	if ctx.Err() != nil {
		return errInterrupted // nothing sent
	}
	var query url.Values
	if c.component != "" {
		query = url.Values{"component": {c.component}}
	}
	uri, rd, err := requestOf(path, query, body)
	if err != nil {
		return err
	}
	type answer struct {
		resp *http.Response
		err  error
	}
	got := make(chan answer, 1)
	go func() { // AdminAPIRequest takes no context: it returns once the headers arrive
		resp, err := caddycmd.AdminAPIRequest(c.addr, method, uri, http.Header{"Accept": {ndjsonType}}, rd)
		got <- answer{resp, err}
	}()
	var resp *http.Response
	select {
	case a := <-got:
		if a.err != nil {
			return adminErrorText(a.err, c.addr)
		}
		resp = a.resp
	case <-ctx.Done():
		go func() { // the request ends with the process; close it if the answer comes first
			if a := <-got; a.resp != nil {
				a.resp.Body.Close()
			}
		}()
		return errInterrupted
	}
	stop := context.AfterFunc(ctx, func() { resp.Body.Close() })
	defer stop()
	defer resp.Body.Close()
	err = decodeNDJSON(resp.Body, f)
	if ctx.Err() != nil {
		return errInterrupted
	}
	if err != nil {
		return fmt.Errorf("reading the admin API's answer to %s %s: %v", method, path, err)
	}
	return nil
}

func cmdRebuild(fl caddycmd.Flags, cio cliIO) (int, error) {
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	rate, _ := fl.GetFloat64("rate")
	if rate < 0 || rate > 10 {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("--rate %v: want more than 0 and at most 10 authorizers per second (0: renew_rate)", rate)
	}
	req := rebuildRequest{Verify: fl.Bool("verify"), OverwriteUnreadable: fl.Bool("overwrite-unreadable"), Rate: rate}
	for _, a := range fl.Args() {
		if err := tokensource.CheckAppID(a); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		req.AppIDs = append(req.AppIDs, a)
	}
	ctx, cancel := interruptible()
	defer cancel()
	return runRebuild(ctx, c, req, fl.Bool("json"), cio)
}

// runRebuild runs the rebuild through the admin API and prints its results.
func runRebuild(ctx context.Context, c *adminClient, req rebuildRequest, asJSON bool, cio cliIO) (int, error) {
	ans := rebuildAnswer{ComponentAppID: c.component, Results: []tokensource.RebuildEvent{}, Counts: map[string]int{}}
	label := "rebuild"
	if c.component != "" {
		label += " " + c.component
	}
	bar := newProgress(cio.errOut, asJSON, label)
	total, done, failed := len(req.AppIDs), 0, 0
	var ended bool
	var runErr string
	err := c.stream(ctx, http.MethodPost, "/tptoken/rebuild", req, func(event string, line []byte) error {
		switch event {
		case "start":
			var ev streamEvent
			if json.Unmarshal(line, &ev) == nil && ev.ComponentAppID != "" {
				ans.ComponentAppID = ev.ComponentAppID
				bar.label = "rebuild " + ev.ComponentAppID
			}
		case "listed":
			var ev tokensource.RebuildEvent
			if err := json.Unmarshal(line, &ev); err != nil {
				return err
			}
			if len(req.AppIDs) == 0 {
				total = max(ev.PlatformTotal, ev.Listed)
			}
		case "result":
			var ev tokensource.RebuildEvent
			if err := json.Unmarshal(line, &ev); err != nil {
				return err
			}
			ans.Results = append(ans.Results, ev)
			ans.Counts[ev.Result]++
			done++
			if rebuildFailed(ev.Result) {
				failed++
			}
		case "error":
			var ev streamEvent
			if err := json.Unmarshal(line, &ev); err != nil {
				return err
			}
			runErr = ev.Error
		case "end":
			var ev streamEvent
			if err := json.Unmarshal(line, &ev); err != nil {
				return err
			}
			ended = true
			if ev.Summary != nil {
				ans.Summary = *ev.Summary
			}
		}
		bar.update(done, max(total, done), failed)
		return nil
	})
	bar.clear()
	interrupted := errors.Is(err, errInterrupted)
	if err != nil && !interrupted {
		return caddy.ExitCodeFailedStartup, err
	}
	if interrupted {
		ans.Summary.Event, ans.Summary.Interrupted = "end", true
	} else if !ended {
		return caddy.ExitCodeFailedStartup, errors.New("the admin API's rebuild stream ended before its end line: see the Caddy log, and run the rebuild again (safe)")
	}
	if runErr != "" && ans.Summary.Error == "" {
		ans.Summary.Error = runErr
	}
	sort.SliceStable(ans.Results, func(i, j int) bool {
		return ans.Results[i].AppID+ans.Results[i].Fingerprint < ans.Results[j].AppID+ans.Results[j].Fingerprint
	})
	if asJSON {
		if err := printJSON(cio.out, ans); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
	} else if err := printRebuild(cio.out, ans); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	switch {
	case interrupted:
		return exitInterrupted, fmt.Errorf("interrupted after %d/%d authorizers; operations in flight finish on the server; rerunning is safe (done authorizers are skipped)", done, max(total, done))
	case ans.Summary.Error != "":
		return 1, fmt.Errorf("the rebuild stopped early: %s", ans.Summary.Error)
	case failed > 0:
		return 1, fmt.Errorf("%d of %d authorizers failed, were busy or unreadable: see the DETAIL column; fix the cause and run the rebuild again (done authorizers are skipped)", failed, done)
	}
	return caddy.ExitCodeSuccess, nil
}

// rebuildResults lists the result names in the order the counts line shows them.
var rebuildResults = []string{tokensource.RebuildRebuilt, tokensource.RebuildUnchanged, tokensource.RebuildRefreshed,
	tokensource.RebuildRecovered, tokensource.RebuildNotAuthorized, tokensource.RebuildSkippedUnreadable,
	tokensource.RebuildSkippedFamily, tokensource.RebuildBusy, tokensource.RebuildFailed, tokensource.RebuildNotListed}

func printRebuild(out io.Writer, ans rebuildAnswer) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "APPID\tRESULT\tSTATE\tGEN\tDETAIL")
	for _, r := range ans.Results {
		state, gen := "-", "-"
		if r.Authorizer != nil {
			state, gen = stateText(*r.Authorizer), strconv.FormatUint(r.Authorizer.Generation, 10)
		}
		detail := r.Detail
		if r.AppID == "" && r.Fingerprint != "" {
			detail = "appid fingerprint " + r.Fingerprint + ": " + detail
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", orDash(r.AppID), r.Result, state, gen, orDash(detail))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	parts := []string{}
	for _, k := range rebuildResults {
		if n := ans.Counts[k]; n > 0 || k == tokensource.RebuildRebuilt || k == tokensource.RebuildUnchanged || k == tokensource.RebuildFailed {
			parts = append(parts, fmt.Sprintf("%s %d", k, n))
		}
	}
	fmt.Fprintf(out, "\n%d authorizers: %s\n", len(ans.Results), strings.Join(parts, ", "))
	s := ans.Summary
	if s.PlatformTotal > 0 || s.Listed > 0 {
		fmt.Fprintf(out, "the platform lists %d authorizers of %s", s.PlatformTotal, orDash(ans.ComponentAppID))
		if s.Malformed > 0 {
			fmt.Fprintf(out, " (%d entries that are not appids were ignored)", s.Malformed)
		}
		fmt.Fprintln(out)
	}
	if s.ListChanged {
		fmt.Fprintln(out, "the list changed while it was read: run the rebuild again to be sure")
	}
	if s.NotListedTotal > 0 {
		more := ""
		if s.NotListedTotal > len(s.NotListed) {
			more = fmt.Sprintf(" and %d more", s.NotListedTotal-len(s.NotListed))
		}
		fmt.Fprintf(out, "%d records in storage are not in the platform's list (left alone; their next renewal settles them): %s%s\n",
			s.NotListedTotal, strings.Join(s.NotListed, ", "), more)
	}
	return nil
}
