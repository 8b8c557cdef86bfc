package tptoken

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// POST /tptoken/rebuild[?component=<appid>]: rebuild from the platform's
// authorized-app list (`caddy tptoken rebuild`). With Accept:
// application/x-ndjson the answer streams one JSON object per line, flushed
// as it happens:
//
//	{"event":"start", ...}                         the run began
//	{"event":"listed","platform_total":N,"listed":n}  after each page of the list
//	{"event":"result","appid","result","detail","authorizer"}  one per authorizer
//	{"event":"progress","done","total","failed","rate_per_s","eta_s"}  every second
//	{"event":"error","error"}                      the run failed after the stream began
//	{"event":"end","component_appid","summary"}    last line
//
// Otherwise the answer is one JSON document at the end (rebuildAnswer). An
// error before the run begins (bad options, no ticket yet, a rebuild already
// running: 409) is a normal JSON error either way. A client that goes away
// stops the run; the authorizer operations in flight finish on the server.

const ndjsonType = "application/x-ndjson"

// rebuildRequest is the body of POST /tptoken/rebuild (optional: {} or none
// means the defaults).
type rebuildRequest struct {
	Verify              bool     `json:"verify,omitempty"`
	OverwriteUnreadable bool     `json:"overwrite_unreadable,omitempty"`
	Rate                float64  `json:"rate,omitempty"`
	AppIDs              []string `json:"appids,omitempty"`
}

// rebuildAnswer is the JSON answer of POST /tptoken/rebuild, and what
// `caddy tptoken rebuild --json` prints.
type rebuildAnswer struct {
	ComponentAppID string                     `json:"component_appid"`
	Results        []tokensource.RebuildEvent `json:"results"`
	Counts         map[string]int             `json:"counts"`
	Summary        tokensource.RebuildEvent   `json:"summary"`
}

// streamEvent is a line of the stream that the engine does not make.
type streamEvent struct {
	Event          string                    `json:"event"`
	ComponentAppID string                    `json:"component_appid,omitempty"`
	StartedAt      time.Time                 `json:"started_at,omitzero"`
	Verify         bool                      `json:"verify,omitempty"`
	Overwrite      bool                      `json:"overwrite_unreadable,omitempty"`
	Rate           float64                   `json:"rate,omitempty"`
	Rows           int                       `json:"rows,omitempty"` // import: rows in the request
	Done           *int                      `json:"done,omitempty"`
	Total          int                       `json:"total,omitempty"`
	Failed         int                       `json:"failed,omitempty"`
	RatePerSecond  float64                   `json:"rate_per_s,omitempty"`
	ETASeconds     float64                   `json:"eta_s,omitempty"`
	Error          string                    `json:"error,omitempty"`
	Summary        *tokensource.RebuildEvent `json:"summary,omitempty"`
	Counts         map[string]int            `json:"counts,omitempty"`
}

// rebuildFailed: a result that makes the run fail (exit status 1): an
// authorizer to rerun or a key to fix.
func rebuildFailed(result string) bool {
	switch result {
	case tokensource.RebuildFailed, tokensource.RebuildBusy, tokensource.RebuildSkippedUnreadable:
		return true
	}
	return false
}

// wantsNDJSON reports whether the client asked for a stream.
func wantsNDJSON(r *http.Request) bool { return strings.Contains(r.Header.Get("Accept"), ndjsonType) }

// ndjsonStream writes one JSON object per line, flushed at once.
type ndjsonStream struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	err error // the first write error: the client is gone
}

func startNDJSON(w http.ResponseWriter) *ndjsonStream {
	w.Header().Set("Content-Type", ndjsonType)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	return &ndjsonStream{w: w, rc: http.NewResponseController(w)}
}

func (s *ndjsonStream) send(v any) {
	if s.err != nil {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		s.err = err
		return
	}
	if _, s.err = s.w.Write(append(b, '\n')); s.err == nil {
		s.err = s.rc.Flush()
	}
}

// readOptionalBody is readBody for a body that may be empty.
func readOptionalBody(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusRequestEntityTooLarge, Err: fmt.Errorf("body larger than %d bytes", limit)}
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	if err := decodeStrict(b, v); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf(`%v: want {"verify"?, "overwrite_unreadable"?, "rate"?, "appids"?}`, err)}
	}
	return nil
}

// tally counts results as they arrive, for progress lines.
type tally struct {
	done, failed int
	meter        rateMeter
}

func (t *tally) add(failed bool, now time.Time) {
	t.done++
	if failed {
		t.failed++
	}
	t.meter.observe(t.done, now)
}

func (t *tally) progress(total int) streamEvent {
	total = max(total, t.done)
	done := t.done
	return streamEvent{Event: "progress", Done: &done, Total: total, Failed: t.failed,
		RatePerSecond: t.meter.perSecond(), ETASeconds: t.meter.eta(total - t.done).Round(time.Second).Seconds()}
}

func (a *adminAPI) rebuild(w http.ResponseWriter, r *http.Request, c *component) error {
	var req rebuildRequest
	if err := readOptionalBody(w, r, maxImportBody, &req); err != nil {
		return err
	}
	if len(req.AppIDs) > maxImportRows {
		return caddy.APIError{HTTPStatus: http.StatusRequestEntityTooLarge, Err: fmt.Errorf("%d appids: name at most %d, or none for all", len(req.AppIDs), maxImportRows)}
	}
	// The run ends when the client goes away (its context); the operation on
	// each authorizer is the engine's, which a cancellation never cuts off.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	events := make(chan tokensource.RebuildEvent, 256)
	type outcome struct {
		sum tokensource.RebuildEvent
		err error
	}
	done := make(chan outcome, 1)
	go func() { // owned by this handler, which waits for it below
		sum, err := c.engine.Rebuild(ctx, tokensource.RebuildOptions{Verify: req.Verify, OverwriteUnreadable: req.OverwriteUnreadable,
			Rate: req.Rate, AppIDs: req.AppIDs, Progress: func(ev tokensource.RebuildEvent) { events <- ev }})
		done <- outcome{sum, err}
	}()

	stream := wantsNDJSON(r)
	var s *ndjsonStream
	ans := rebuildAnswer{ComponentAppID: c.appID, Results: []tokensource.RebuildEvent{}, Counts: map[string]int{}}
	var t tally
	total := len(req.AppIDs)
	begin := func() {
		if stream && s == nil {
			s = startNDJSON(w)
			s.send(streamEvent{Event: "start", ComponentAppID: c.appID, StartedAt: time.Now().UTC(), Verify: req.Verify,
				Overwrite: req.OverwriteUnreadable, Rate: req.Rate})
		}
	}
	handle := func(ev tokensource.RebuildEvent) {
		begin()
		switch ev.Event {
		case "listed":
			if len(req.AppIDs) == 0 {
				total = max(ev.PlatformTotal, ev.Listed)
			}
		case "result":
			if !stream { // a stream sends each result as it comes
				ans.Results = append(ans.Results, ev)
				ans.Counts[ev.Result]++
			}
			t.add(rebuildFailed(ev.Result), time.Now())
		}
		if s != nil {
			s.send(ev)
		}
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case ev := <-events:
			handle(ev)
		case <-tick.C:
			begin()
			if s != nil {
				s.send(t.progress(total))
			}
		case o := <-done:
			for len(events) > 0 { // sent before Rebuild returned
				handle(<-events)
			}
			if o.err != nil {
				if s == nil {
					return apiError(w, o.err)
				}
				s.send(streamEvent{Event: "error", Error: o.err.Error()})
				s.send(streamEvent{Event: "end", ComponentAppID: c.appID})
				return nil
			}
			ans.Summary = o.sum
			if s == nil && !stream {
				return writeJSON(w, ans)
			}
			begin()
			s.send(t.progress(total))
			s.send(streamEvent{Event: "end", ComponentAppID: c.appID, Summary: &o.sum})
			return nil
		}
		if s != nil && s.err != nil {
			cancel() // the client is gone: stop the run
		}
	}
}

// decodeNDJSON reads a stream line by line and calls f for each object
// (the event name and the raw line). It returns the first read or
// decoding error.
func decodeNDJSON(r io.Reader, f func(event string, line []byte) error) error {
	dec := json.NewDecoder(r)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		var head struct {
			Event string `json:"event"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			return err
		}
		if err := f(head.Event, raw); err != nil {
			return err
		}
	}
}
