package tptoken

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// POST /tptoken/import[?component=<appid>]: legacy refresh tokens taken over
// row by row (`caddy tptoken import`).

// importRow is one legacy refresh token to import.
type importRow struct {
	AppID        string `json:"appid"`
	RefreshToken string `json:"authorizer_refresh_token"`
	// RefreshExpiresAt is when the legacy store says the refresh token expires:
	// an RFC 3339 time or Unix seconds. Optional.
	RefreshExpiresAt flexTime `json:"refresh_expires_at,omitzero"`
}

// flexTime is an RFC 3339 string or a number of Unix seconds.
type flexTime struct{ time.Time }

func (t *flexTime) UnmarshalJSON(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "null" || s == `""` {
		return nil
	}
	if strings.HasPrefix(s, `"`) {
		var str string
		if err := json.Unmarshal(b, &str); err != nil {
			return err
		}
		v, err := parseExpiry(str)
		if err != nil {
			return err
		}
		t.Time = v
		return nil
	}
	v, err := parseExpiry(s)
	if err != nil {
		return err
	}
	t.Time = v
	return nil
}

func (t flexTime) MarshalJSON() ([]byte, error) { return json.Marshal(t.Time) }

// parseExpiry reads an RFC 3339 time or Unix seconds.
func parseExpiry(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n <= 0 {
			return time.Time{}, errors.New("refresh_expires_at: want a positive Unix time")
		}
		return time.Unix(n, 0), nil
	}
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, errors.New("refresh_expires_at: want an RFC 3339 time (2026-01-02T15:04:05Z) or Unix seconds")
	}
	return v, nil
}

// importRowResult is the outcome of one row: tokensource.ImportResult plus
// the row's position (1-based) in the request.
type importRowResult struct {
	Row int `json:"row"`
	tokensource.ImportResult
}

// importAnswer is the answer of POST /tptoken/import.
type importAnswer struct {
	// ComponentAppID is the component of every row, or "" when rows were
	// matched to components one by one (several components, none named).
	ComponentAppID string            `json:"component_appid"`
	Results        []importRowResult `json:"results"`
	Counts         map[string]int    `json:"counts"` // by result
}

// importTokens takes over refresh tokens from a legacy store. Each row is
// verified by one refresh under the authorizer's lock; a rejected token is
// recovered when the authorization still exists. Bad rows are reported and
// the good ones kept; importing the same rows again changes nothing. Every
// row gets a result. With several components and none named, a row goes to
// the one component holding a record of its appid, or fails asking for one.
func (a *adminAPI) importTokens(w http.ResponseWriter, r *http.Request) error {
	var fixed *component // every row's component, when there is one
	if a.err != nil || r.URL.Query().Get("component") != "" || len(a.order) < 2 {
		c, err := a.pick(r)
		if err != nil {
			return err
		}
		fixed = c
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxImportBody))
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusRequestEntityTooLarge,
			Err: fmt.Errorf("body larger than %d bytes: import in batches of at most %d rows", maxImportBody, maxImportRows)}
	}
	var raw []json.RawMessage
	if err := decodeStrict(b, &raw); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest,
			Err: fmt.Errorf(`%v: want a JSON array of {"appid", "authorizer_refresh_token", "refresh_expires_at"?}`, err)}
	}
	if len(raw) == 0 {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("no rows to import")}
	}
	if len(raw) > maxImportRows {
		return caddy.APIError{HTTPStatus: http.StatusRequestEntityTooLarge,
			Err: fmt.Errorf("%d rows: import in batches of at most %d", len(raw), maxImportRows)}
	}

	ctx := r.Context()
	results := make([]importRowResult, len(raw))
	// With Accept: application/x-ndjson, each row's result is a line sent as
	// soon as the row is done (the CLI's progress), then an "end" line.
	var s *ndjsonStream
	var smu sync.Mutex
	sent := make([]bool, len(raw))
	emit := func(i int) {}
	if wantsNDJSON(r) {
		s = startNDJSON(w)
		s.send(streamEvent{Event: "start", Rows: len(raw)})
		emit = func(i int) {
			smu.Lock()
			defer smu.Unlock()
			if !sent[i] {
				sent[i] = true
				s.send(importEvent{Event: "result", importRowResult: results[i]})
			}
		}
	}
	rows := make([]importRow, len(raw))
	comps := make([]*component, len(raw))
	byApp := map[string][]int{} // rows of one appid run in order, one after the other
	var apps []string
	for i, m := range raw {
		results[i].Row = i + 1
		results[i].Result = "failed"
		if err := decodeStrict(m, &rows[i]); err != nil {
			results[i].Detail = strings.Replace(err.Error(), "body", "row", 1)
			var peek struct {
				AppID string `json:"appid"`
			}
			_ = json.Unmarshal(m, &peek)
			results[i].Fingerprint = tokensource.Secret(strings.TrimSpace(peek.AppID)).Fingerprint()
			continue
		}
		rows[i].AppID = strings.TrimSpace(rows[i].AppID)
		rows[i].RefreshToken = strings.TrimSpace(rows[i].RefreshToken)
		if !tokensource.ValidAppID(rows[i].AppID) {
			results[i].ImportResult = tokensource.ImportResult{Result: "failed", Fingerprint: tokensource.Secret(rows[i].AppID).Fingerprint(),
				Detail: "invalid appid (" + wantAppID + "; not echoed back: check the column order appid,authorizer_refresh_token)"}
			continue
		}
		comps[i] = fixed
		if comps[i] == nil {
			c, detail := a.importComponent(ctx, rows[i].AppID)
			if c == nil {
				results[i].ImportResult = tokensource.ImportResult{Result: "failed", Fingerprint: tokensource.Secret(rows[i].AppID).Fingerprint(), Detail: detail}
				continue
			}
			comps[i] = c
		}
		key := comps[i].appID + "/" + rows[i].AppID
		if _, seen := byApp[key]; !seen {
			apps = append(apps, key)
		}
		byApp[key] = append(byApp[key], i)
	}

	// A few authorizers at a time: each import is a platform call under a lock.
	jobs := make(chan string)
	var wg sync.WaitGroup
	for range min(importWorkers, len(apps)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for key := range jobs {
				for _, i := range byApp[key] {
					results[i].ImportResult = a.importOne(ctx, comps[i], rows[i])
					emit(i)
				}
			}
		}()
	}
	for i := range results {
		if comps[i] == nil { // refused before any work
			emit(i)
		}
	}
	for _, key := range apps {
		jobs <- key
	}
	close(jobs)
	wg.Wait()

	ans := importAnswer{Results: results, Counts: map[string]int{}}
	if fixed != nil {
		ans.ComponentAppID = fixed.appID
	}
	for i, res := range results {
		ans.Counts[res.Result]++
		comp := fixed
		if comps[i] != nil {
			comp = comps[i]
		}
		if comp != nil {
			metricsFor(comp.appID).importRow(res.Result)
		}
	}
	a.log.Info("legacy refresh tokens imported through the admin API", zap.String("component_appid", ans.ComponentAppID),
		zap.Int("rows", len(rows)), zap.Any("counts", ans.Counts))
	if s != nil {
		s.send(streamEvent{Event: "end", ComponentAppID: ans.ComponentAppID, Counts: ans.Counts})
		return nil
	}
	return writeJSON(w, ans)
}

// importEvent is a result line of an import stream.
type importEvent struct {
	Event string `json:"event"`
	importRowResult
}

// importComponent is the component of a row when several are configured and
// none is named: the one holding a record of appid. Otherwise nil and why.
func (a *adminAPI) importComponent(ctx context.Context, appid string) (*component, string) {
	holders, err := a.holders(ctx, appid)
	switch {
	case err != nil:
		return nil, err.Error()
	case len(holders) == 1:
		return holders[0], ""
	case len(holders) > 1:
		return nil, fmt.Sprintf("several components (%s) hold a record of this appid: import with a component named (?component=, CLI --component)", componentNames(holders))
	}
	return nil, fmt.Sprintf("several components are configured (%s) and none holds a record of this appid: import with the component named (?component=, CLI --component)", strings.Join(a.order, ", "))
}

func (a *adminAPI) importOne(ctx context.Context, c *component, row importRow) tokensource.ImportResult {
	if ctx.Err() != nil {
		return tokensource.ImportResult{Fingerprint: tokensource.Secret(row.AppID).Fingerprint(), Result: "failed", Detail: "not attempted: the request was cancelled"}
	}
	res := c.engine.Import(ctx, row.AppID, tokensource.Secret(row.RefreshToken), row.RefreshExpiresAt.Time)
	if row.RefreshToken != "" && strings.Contains(res.Detail, row.RefreshToken) {
		res.Detail = "error text withheld: it quoted the refresh token"
	}
	return res
}
