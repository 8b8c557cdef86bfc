package tptoken

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// `caddy tptoken check-storage`, through the running instance's admin API
// (POST /tptoken/check-storage, admin_storagecheck.go), and the hidden
// `check-storage-holder` it starts (storagecheck_holder.go).

func checkStorageCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check-storage",
		Short: "Checks the guarantees tptoken relies on from the running config's storage",
		Long: `
Checks, against the storage the running config uses, what tptoken relies on
to coordinate instances and keep records, through two handles as two instances
would hold them (the config's storage, and a second one provisioned from the
same configuration):

  round_trip      store, load, overwrite and delete 4 KiB values (timings)
  visibility      a write through one handle is read at once through the other
  list            List under a prefix, recursive and not, returns what was stored
  lock_exclusion  a lock held through one handle excludes the other, for --hold
                  (longer than the storage's lease), and is handed over on release
  lock_takeover   a lock whose holder process is killed is taken over, and how fast
  cleanup         the scratch keys (tptoken/check-storage-<run>/) and locks are gone

Each line gives a verdict (pass, warn, skipped, fail), the time taken and what
a failure costs. It takes about --hold plus the take-over time (file_system:
about 20 s). It cannot prove durability across a restart of the storage
(docs/reliability.md: configure persistence, such as Redis AOF).

Exit status: 0 every guarantee passed (or warned), 1 one failed,
2 one was skipped (for example: no second handle could be opened).
`,
		Args: cobra.NoArgs,
		RunE: runWith(cmdCheckStorage),
	}
	cmd.Flags().Duration("hold", defaultCheckHold, "How long lock_exclusion holds the lock (1s to 2m; longer than the storage's lock lease)")
	return cmd
}

// checkStorageJSON is what `check-storage --json` prints.
type checkStorageJSON struct {
	Storage      string      `json:"storage"`
	SecondHandle string      `json:"second_handle"`
	Scratch      string      `json:"scratch"`
	Verdict      string      `json:"verdict"`
	TookMS       int64       `json:"took_ms"`
	Results      []checkLine `json:"results"`
	CannotProve  []string    `json:"cannot_prove"`
	Detail       string      `json:"detail,omitempty"`
}

func cmdCheckStorage(fl caddycmd.Flags, cio cliIO) (int, error) {
	c, err := newAdminClient(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	hold, _ := fl.GetDuration("hold")
	if hold < minCheckHold || hold > maxCheckHold {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("--hold %s: want %s to %s", hold, minCheckHold, maxCheckHold)
	}
	asJSON := fl.Bool("json")
	uri := "/tptoken/check-storage?" + url.Values{"hold": {hold.String()}}.Encode()
	resp, err := caddycmd.AdminAPIRequest(c.addr, http.MethodPost, uri, nil, nil)
	if err != nil {
		return caddy.ExitCodeFailedStartup, adminErrorText(err, c.addr)
	}
	defer resp.Body.Close()

	var res checkStorageJSON
	var end *checkLine
	tw := &checkTable{out: cio.out}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l checkLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return caddy.ExitCodeFailedStartup, fmt.Errorf("reading the admin API answer: %v", err)
		}
		switch l.Event {
		case "start":
			res.Storage, res.SecondHandle, res.Scratch = l.Storage, l.SecondHandle, l.Scratch
			if !asJSON {
				tw.start(l)
			}
		case "result":
			res.Results = append(res.Results, l)
			if !asJSON {
				tw.row(l)
			}
		case "end":
			end = &l
		}
	}
	if err := sc.Err(); err != nil && end == nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("reading the admin API answer: %v", err)
	}
	if end == nil {
		return caddy.ExitCodeFailedStartup, errors.New("the check ended without a verdict (Caddy stopped or reloaded?): run it again")
	}
	res.Verdict, res.TookMS, res.CannotProve, res.Detail = end.Verdict, end.TookMS, end.CannotProve, end.Detail
	if asJSON {
		if err := printJSON(cio.out, res); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
	} else {
		tw.end(*end)
	}
	var failed, skipped []string
	for _, r := range res.Results {
		switch r.Verdict {
		case verdictFail:
			failed = append(failed, r.Guarantee)
		case verdictSkipped:
			skipped = append(skipped, r.Guarantee)
		}
	}
	switch {
	case len(failed) > 0:
		return caddy.ExitCodeFailedStartup, fmt.Errorf("the storage failed %s: tptoken is not safe on it (see the details above)", strings.Join(failed, ", "))
	case end.Verdict == verdictFail:
		return caddy.ExitCodeFailedStartup, errors.New("the storage check failed")
	case len(skipped) > 0 || end.Verdict == verdictSkipped:
		return 2, fmt.Errorf("not every guarantee was checked (skipped: %s)", strings.Join(skipped, ", "))
	}
	return caddy.ExitCodeSuccess, nil
}

// checkTable prints the check's lines as they arrive, in columns.
type checkTable struct{ out io.Writer }

func (t *checkTable) start(l checkLine) {
	fmt.Fprintf(t.out, "Storage:       %s\nSecond handle: %s\nScratch:       %s (lock_exclusion holds %s)\n\n",
		l.Storage, l.SecondHandle, l.Scratch, time.Duration(l.HoldMS)*time.Millisecond)
	fmt.Fprintf(t.out, "%-15s %-8s %8s  %s\n", "GUARANTEE", "VERDICT", "TIME", "DETAIL")
}

func (t *checkTable) row(l checkLine) {
	fmt.Fprintf(t.out, "%-15s %-8s %8s  %s\n", l.Guarantee, l.Verdict, tookText(l.TookMS), l.Detail)
}

func (t *checkTable) end(l checkLine) {
	fmt.Fprintf(t.out, "\nVerdict: %s (%s)\n", l.Verdict, tookText(l.TookMS))
	if l.Detail != "" {
		fmt.Fprintf(t.out, "%s\n", l.Detail)
	}
	fmt.Fprintln(t.out, "Not proven by this check:")
	for _, s := range l.CannotProve {
		fmt.Fprintf(t.out, "  - %s\n", s)
	}
}

func tookText(ms int64) string {
	if ms == 0 {
		return "<1ms"
	}
	return short(time.Duration(ms) * time.Millisecond).String()
}

// checkStorageHolderCommand is the lock holder check-storage starts; hidden.
func checkStorageHolderCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "check-storage-holder",
		Short:  "Holds a lock for check-storage's lock_takeover (started by check-storage)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: runWith(func(_ caddycmd.Flags, cio cliIO) (int, error) {
			if code := runLockHolder(cio.in, cio.out); code != 0 {
				return code, errors.New("check-storage-holder failed")
			}
			return caddy.ExitCodeSuccess, nil
		}),
	}
}
