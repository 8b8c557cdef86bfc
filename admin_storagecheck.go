package tptoken

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
)

// POST /tptoken/check-storage[?hold=<duration>]: check-storage against the
// running config's storage (storagecheck.go). The answer is NDJSON, one line
// as each guarantee ends (a check takes about half a minute):
//
//	{"event":"start","storage","second_handle","scratch","hold_ms"}
//	{"event":"result","guarantee","verdict":"pass|warn|skipped|fail","took_ms","takeover_ms"?,"detail"}
//	...
//	{"event":"end","verdict","took_ms","cannot_prove":[...]}
//
// One check runs at a time per process (409 otherwise). A client that goes
// away interrupts the check, which still removes its scratch keys and locks.

// storageCheckRunning is set while a check runs in this process.
var storageCheckRunning atomic.Bool

func (a *adminAPI) checkStorage(w http.ResponseWriter, r *http.Request) error {
	if a.err != nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: a.err}
	}
	if err := readEmptyBody(w, r); err != nil {
		return err
	}
	hold := defaultCheckHold
	if s := r.URL.Query().Get("hold"); s != "" {
		d, err := caddy.ParseDuration(s)
		if err != nil || d < minCheckHold || d > maxCheckHold {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest,
				Err: fmt.Errorf("hold: want a duration from %s to %s (default %s)", minCheckHold, maxCheckHold, defaultCheckHold)}
		}
		hold = d
	}
	if a.storage == nil || a.storage.a == nil {
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: errors.New("the tptoken app has no storage")}
	}
	if !storageCheckRunning.CompareAndSwap(false, true) {
		return caddy.APIError{HTTPStatus: http.StatusConflict, Err: errors.New("a storage check is already running in this instance: wait for it to end (about half a minute)")}
	}
	defer storageCheckRunning.Store(false)

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	// Once the answer has started, a failure to write means the client left:
	// the request's context ends and the check stops.
	runStorageCheck(r.Context(), a.storage, hold, a.log, func(l checkLine) {
		b, _ := json.Marshal(l)
		if _, err := w.Write(append(b, '\n')); err == nil {
			_ = rc.Flush()
		}
	})
	return nil
}
