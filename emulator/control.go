package emulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// The control surface, for tests that drive a Caddy process and for demos.
// Every route takes and returns JSON; errors are {"error": "..."} with a 4xx
// or 5xx status. It is a test fixture: it reveals every issued secret.
//
//	POST   /_emulator/authorize    {"appid","push"}          → {"authorization_code","expires_in"}
//	POST   /_emulator/unauthorize  {"appid","push"}          → {"ok":true}
//	POST   /_emulator/ticket                                  → {"ok":true} (mint and push a ticket now)
//	POST   /_emulator/revoke       {"appid","family"}        → {"ok":true} (the access token stops working)
//	POST   /_emulator/expire       {"appid","family"}        → {"ok":true} (the access token expires now)
//	GET    /_emulator/lifetimes                               → current lifetimes as Go duration strings
//	POST   /_emulator/lifetimes    {"access_token_ttl":"90s", ...} → the lifetimes after the change
//	GET    /_emulator/faults                                  → {"<op>": {...}}
//	POST   /_emulator/faults       {"op", "latency", "errno_40045", "http_5xx", "drop_response", "down", "appid"}
//	DELETE /_emulator/faults                                  → {"ok":true}
//	POST   /_emulator/push_url     {"push_url"}              → {"ok":true}
//	GET    /_emulator/stats                                   → Stats
//	GET    /_emulator/calls                                   → {"calls":[APICall...]} (the last 100 API calls, oldest first)
//	DELETE /_emulator/calls                                   → {"ok":true}
//	GET    /_emulator/secrets                                 → {"secrets":[...]} (IssuedSecrets)
//	GET    /_emulator/authorizers                             → {"<appid>": authorized}
//	POST   /_emulator/apps         {"appid","secret"}        → {"ok":true} (an app whose own tokens are issued)
//	POST   /_emulator/apps/<appid>/<kind>/revoke              → {"ok":true} (its newest app_access_token or client_token stops working)

// LifetimesJSON is the control-surface form of Lifetimes: Go duration strings
// ("90s", "2h"); empty fields are left unchanged.
type LifetimesJSON struct {
	AccessTokenTTL    string `json:"access_token_ttl,omitempty"`
	RefreshTokenTTL   string `json:"refresh_token_ttl,omitempty"`
	ComponentTokenTTL string `json:"component_token_ttl,omitempty"`
	CodeTTL           string `json:"code_ttl,omitempty"`
	TicketTTL         string `json:"ticket_ttl,omitempty"`
	V1ReissueWindow   string `json:"v1_reissue_window,omitempty"`
	V2Grace           string `json:"v2_grace,omitempty"`
	AppTokenTTL       string `json:"app_token_ttl,omitempty"`
	AppGrace          string `json:"app_grace,omitempty"`
}

func (l LifetimesJSON) parse() (Lifetimes, error) {
	var out Lifetimes
	for _, f := range []struct {
		name string
		s    string
		dst  *time.Duration
	}{
		{"access_token_ttl", l.AccessTokenTTL, &out.AccessTokenTTL}, {"refresh_token_ttl", l.RefreshTokenTTL, &out.RefreshTokenTTL},
		{"component_token_ttl", l.ComponentTokenTTL, &out.ComponentTokenTTL}, {"code_ttl", l.CodeTTL, &out.CodeTTL},
		{"ticket_ttl", l.TicketTTL, &out.TicketTTL}, {"v1_reissue_window", l.V1ReissueWindow, &out.V1ReissueWindow},
		{"v2_grace", l.V2Grace, &out.V2Grace}, {"app_token_ttl", l.AppTokenTTL, &out.AppTokenTTL},
		{"app_grace", l.AppGrace, &out.AppGrace},
	} {
		if f.s == "" {
			continue
		}
		d, err := time.ParseDuration(f.s)
		if err != nil || d <= 0 {
			return out, fmt.Errorf("%s: %q is not a positive Go duration", f.name, f.s)
		}
		*f.dst = d
	}
	return out, nil
}

func lifetimesJSON(l Lifetimes) LifetimesJSON {
	return LifetimesJSON{
		AccessTokenTTL: l.AccessTokenTTL.String(), RefreshTokenTTL: l.RefreshTokenTTL.String(),
		ComponentTokenTTL: l.ComponentTokenTTL.String(), CodeTTL: l.CodeTTL.String(), TicketTTL: l.TicketTTL.String(),
		V1ReissueWindow: l.V1ReissueWindow.String(), V2Grace: l.V2Grace.String(),
		AppTokenTTL: l.AppTokenTTL.String(), AppGrace: l.AppGrace.String(),
	}
}

// FaultsJSON is the control-surface form of Faults (latency as a Go duration string).
type FaultsJSON struct {
	Op           string `json:"op,omitempty"`
	Latency      string `json:"latency,omitempty"`
	Errno40045   int    `json:"errno_40045,omitempty"`
	HTTP5xx      int    `json:"http_5xx,omitempty"`
	DropResponse int    `json:"drop_response,omitempty"`
	Down         bool   `json:"down,omitempty"`
	RateLimited  bool   `json:"rate_limited,omitempty"`
	AppID        string `json:"appid,omitempty"`
}

func (e *Emulator) serveControl(w http.ResponseWriter, r *http.Request) {
	fail := func(status int, err error) { writeJSON(w, status, map[string]string{"error": err.Error()}) }
	ok := func() { writeJSON(w, http.StatusOK, map[string]bool{"ok": true}) }
	decode := func(v any) bool {
		b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err == nil && len(b) > 0 {
			err = json.Unmarshal(b, v)
		}
		if err != nil {
			fail(http.StatusBadRequest, fmt.Errorf("bad JSON body: %v", err))
			return false
		}
		return true
	}
	type appReq struct {
		AppID  string `json:"appid"`
		Push   bool   `json:"push"`
		Family string `json:"family"`
	}
	if strings.HasPrefix(r.URL.Path, "/_emulator/apps") {
		e.appControl(w, r, fail, ok)
		return
	}
	key := r.Method + " " + r.URL.Path
	switch key {
	case "POST /_emulator/authorize":
		var q appReq
		if !decode(&q) {
			return
		}
		v, err := e.Authorize(q.AppID, q.Push)
		out := map[string]any{"authorization_code": v, "expires_in": seconds(e.Lifetimes().CodeTTL)}
		switch {
		case v == "":
			fail(http.StatusBadRequest, err)
		case err != nil:
			out["error"] = err.Error()
			writeJSON(w, http.StatusBadGateway, out)
		default:
			writeJSON(w, http.StatusOK, out)
		}
	case "POST /_emulator/unauthorize":
		var q appReq
		if !decode(&q) {
			return
		}
		switch err := e.Unauthorize(q.AppID, q.Push); {
		case errors.Is(err, ErrUnknownAuthorizer):
			fail(http.StatusNotFound, err)
		case err != nil:
			fail(http.StatusBadGateway, err)
		default:
			ok()
		}
	case "POST /_emulator/ticket":
		if err := e.PushTicket(r.Context()); err != nil {
			fail(http.StatusBadGateway, err)
			return
		}
		ok()
	case "POST /_emulator/revoke", "POST /_emulator/expire":
		var q appReq
		if !decode(&q) {
			return
		}
		f, err := tokensource.ParseFamily(q.Family)
		if err != nil {
			fail(http.StatusBadRequest, err)
			return
		}
		done := false
		if key == "POST /_emulator/revoke" {
			done = e.RevokeAccessToken(q.AppID, f)
		} else {
			done = e.ExpireAccessToken(q.AppID, f)
		}
		if !done {
			fail(http.StatusNotFound, fmt.Errorf("no %s token chain for appid %q", f, q.AppID))
			return
		}
		ok()
	case "GET /_emulator/lifetimes":
		writeJSON(w, http.StatusOK, lifetimesJSON(e.Lifetimes()))
	case "POST /_emulator/lifetimes":
		var q LifetimesJSON
		if !decode(&q) {
			return
		}
		l, err := q.parse()
		if err != nil {
			fail(http.StatusBadRequest, err)
			return
		}
		e.SetLifetimes(l)
		writeJSON(w, http.StatusOK, lifetimesJSON(e.Lifetimes()))
	case "GET /_emulator/faults":
		out := map[string]FaultsJSON{}
		m := e.Faults()
		for _, op := range sortedOps(m) {
			f := m[op]
			out[op] = FaultsJSON{Latency: f.Latency.String(), Errno40045: f.Errno40045, HTTP5xx: f.HTTP5xx,
				DropResponse: f.DropResponse, Down: f.Down, RateLimited: f.RateLimited, AppID: f.AppID}
		}
		writeJSON(w, http.StatusOK, out)
	case "POST /_emulator/faults":
		var q FaultsJSON
		if !decode(&q) {
			return
		}
		f := Faults{Errno40045: q.Errno40045, HTTP5xx: q.HTTP5xx, DropResponse: q.DropResponse, Down: q.Down,
			RateLimited: q.RateLimited, AppID: q.AppID}
		if q.Latency != "" {
			d, err := time.ParseDuration(q.Latency)
			if err != nil {
				fail(http.StatusBadRequest, fmt.Errorf("latency: %q is not a Go duration", q.Latency))
				return
			}
			f.Latency = d
		}
		if err := e.SetFaults(q.Op, f); err != nil {
			fail(http.StatusBadRequest, err)
			return
		}
		ok()
	case "DELETE /_emulator/faults":
		e.ClearFaults()
		ok()
	case "POST /_emulator/push_url":
		var q struct {
			PushURL string `json:"push_url"`
		}
		if !decode(&q) {
			return
		}
		if err := e.SetPushURL(q.PushURL); err != nil {
			fail(http.StatusBadRequest, err)
			return
		}
		ok()
	case "GET /_emulator/stats":
		writeJSON(w, http.StatusOK, e.Stats())
	case "GET /_emulator/calls":
		writeJSON(w, http.StatusOK, map[string][]APICall{"calls": e.RecentCalls()})
	case "DELETE /_emulator/calls":
		e.ClearRecentCalls()
		ok()
	case "GET /_emulator/secrets":
		writeJSON(w, http.StatusOK, map[string][]string{"secrets": e.IssuedSecrets()})
	case "GET /_emulator/authorizers":
		writeJSON(w, http.StatusOK, e.Authorizers())
	default:
		fail(http.StatusNotFound, fmt.Errorf("no control route %s", key))
	}
}
