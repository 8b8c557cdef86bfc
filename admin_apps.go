package tptoken

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// Admin routes of apps' own tokens (admin.go routes /tptoken/apps here):
//
//	GET  /tptoken/apps                          every configured app token's state
//	GET  /tptoken/apps/<appid>[/<kind>]         one app's tokens, or one of them
//	POST /tptoken/apps/<appid>/<kind>/refresh   fetch a new token now
//
// Answers show the state (generation, expiry, last fetch and error, backoff),
// never a token or a secret. Only configured apps are named in URLs and answers.

// appStatus is what the admin API shows of one app token.
type appStatus struct {
	tokensource.AppInfo
	// ExpiresInSeconds: seconds until the current token expires.
	ExpiresInSeconds float64 `json:"expires_in_seconds,omitempty"`
	// GraceSeconds: how long the platform keeps the previous token after a fetch.
	GraceSeconds float64 `json:"grace_seconds"`
}

// appsAnswer is the answer of GET /tptoken/apps (and of one app).
type appsAnswer struct {
	Apps []appStatus `json:"apps"`
}

// appRefreshAnswer is the answer of POST /tptoken/apps/<appid>/<kind>/refresh.
type appRefreshAnswer struct {
	appStatus
	// PreviousUsableForSeconds: the token before this fetch still works this
	// long (the platform's grace), so instances still sending it are fine.
	PreviousUsableForSeconds float64 `json:"previous_token_usable_for_seconds"`
}

func statusOf(t *appToken, info tokensource.AppInfo, now time.Time) appStatus {
	st := appStatus{AppInfo: info, GraceSeconds: t.grace.Seconds()}
	if !info.Expiry.IsZero() {
		st.ExpiresInSeconds = info.Expiry.Sub(now).Round(time.Second).Seconds()
	}
	return st
}

// serveApps answers the routes under /tptoken/apps; parts follow "apps".
func (a *adminAPI) serveApps(w http.ResponseWriter, r *http.Request, parts []string) error {
	if a.err != nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: a.err}
	}
	if len(parts) == 3 && parts[2] == "refresh" {
		if err := allowMethods(w, r, http.MethodPost); err != nil {
			return err
		}
		if err := readEmptyBody(w, r); err != nil {
			return err
		}
		t, err := a.appToken(parts[0], parts[1])
		if err != nil {
			return err
		}
		info, err := t.src.Refresh(r.Context())
		if err != nil {
			return apiError(w, err)
		}
		return writeJSON(w, appRefreshAnswer{appStatus: statusOf(t, info, time.Now()), PreviousUsableForSeconds: t.grace.Seconds()})
	}
	if len(parts) > 2 {
		return notFound(r)
	}
	if err := allowMethods(w, r, http.MethodGet); err != nil {
		return err
	}
	var ts []*appToken
	switch len(parts) {
	case 0:
		for _, k := range a.appOrder {
			ts = append(ts, a.apps[k])
		}
	case 1:
		for _, k := range a.appOrder {
			if k.appID == parts[0] {
				ts = append(ts, a.apps[k])
			}
		}
		if len(ts) == 0 {
			return a.unknownApp(parts[0], "")
		}
	case 2:
		t, err := a.appToken(parts[0], parts[1])
		if err != nil {
			return err
		}
		ts = []*appToken{t}
	}
	ans := appsAnswer{Apps: []appStatus{}}
	now := time.Now()
	for _, t := range ts {
		ans.Apps = append(ans.Apps, statusOf(t, t.src.Info(r.Context()), now))
	}
	return writeJSON(w, ans)
}

// appToken is the configured (appid, kind), or a 404 naming what is configured.
func (a *adminAPI) appToken(appid, kind string) (*appToken, error) {
	if !isAppKind(kind) {
		return nil, caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("kind: use " + strings.Join(appKinds, " or "))}
	}
	if t, ok := a.apps[appTokenKey{appid, kind}]; ok {
		return t, nil
	}
	return nil, a.unknownApp(appid, kind)
}

// unknownApp answers an app (and kind) that is not configured. An appid
// that is not configured is not repeated: it may be a token pasted in the
// wrong place.
func (a *adminAPI) unknownApp(appid, kind string) error {
	what := "no app with this appid (fingerprint " + tokensource.Secret(appid).Fingerprint() + ")"
	for _, k := range a.appOrder {
		if k.appID == appid {
			what = "app " + appid + " has no " + kind
			break
		}
	}
	configured := make([]string, 0, len(a.appOrder))
	for _, k := range a.appOrder {
		configured = append(configured, k.appID+"/"+k.kind)
	}
	if len(configured) == 0 {
		configured = []string{"none: add an app block to the tptoken global option"}
	}
	return caddy.APIError{HTTPStatus: http.StatusNotFound,
		Err: fmt.Errorf("%s configured in the tptoken app; configured: %s", what, strings.Join(configured, ", "))}
}
