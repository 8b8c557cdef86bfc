package tptoken

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// The rules of the app credential options and of the handler's app token
// options, one function each, as validate.go's: the Caddyfile parser calls
// them with the line, Provision on every config.

const wantAppKinds = "client_token and/or app_access_token"

// errAppRequired: an app names its appid and its secret.
var errAppRequired = errors.New("an app needs its appid and its secret: app <appid> { secret {env.APP_SECRET} tokens client_token }")

// checkAppTokens: an app keeps at least one kind, each once.
func checkAppTokens(tokens []string) error {
	if len(tokens) == 0 {
		return errors.New("tokens is required: name the kinds tptoken now keeps for this app (" + wantAppKinds +
			"); nothing else may fetch them any more, each fetch elsewhere cuts tptoken's token short")
	}
	for i, k := range tokens {
		if !isAppKind(k) {
			return invalid("tokens", strconv.Quote(k), "use "+wantAppKinds)
		}
		if slices.Contains(tokens[:i], k) {
			return fmt.Errorf("tokens: %s is named twice", k)
		}
	}
	return nil
}

// checkAppEndpoint: an endpoint is of a kind the app keeps, and an absolute
// http(s) URL without a query.
func checkAppEndpoint(kind, v string, tokens []string) error {
	if !isAppKind(kind) {
		return invalid("endpoint", strconv.Quote(kind), "name the kind first: endpoint client_token|app_access_token <url>")
	}
	if !slices.Contains(tokens, kind) {
		return fmt.Errorf("endpoint %s: the app does not keep a %s (tokens)", kind, kind)
	}
	if u, ok := httpBase(v); !ok || u.RawQuery != "" {
		return invalid("endpoint "+kind, strconv.Quote(v), "want an absolute http(s) URL such as https://open.douyin.com")
	}
	return nil
}

// duplicateAppToken: each (app, kind) is configured once.
func duplicateAppToken(appID, kind string) error {
	return fmt.Errorf("app %s: its %s is configured twice: configure each app in one app block", appID, kind)
}

// Where a route puts an app token (InjectPlace.In).
const (
	injectHeader = "header"
	injectQuery  = "query"
	injectBody   = "body"
)

// checkInject: an app token goes in a named header, query parameter, or
// top-level field of a JSON body.
func checkInject(p *InjectPlace) error {
	switch p.In {
	case injectHeader:
		if p.Name == "" || strings.ContainsFunc(p.Name, func(r rune) bool { return !isTokenChar(r) }) {
			return invalid("inject header", strconv.Quote(p.Name), "want a header name such as access-token, access_token or X-Token")
		}
	case injectQuery, injectBody:
		if p.Name == "" || strings.ContainsAny(p.Name, "&=#\"\\") {
			return invalid("inject "+p.In, strconv.Quote(p.Name), "want a parameter name such as access_token")
		}
	default:
		return invalid("inject", strconv.Quote(p.In), "use header <name>, query <name> or body <field>")
	}
	return nil
}

// isTokenChar reports a character allowed in a header name (RFC 9110 token).
func isTokenChar(r rune) bool {
	return r < 127 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", r))
}

// checkAppRoute: a route injecting an app token names its app (app), reads
// it from the request (appid), or has the only app of its kind; the options
// of the other token kinds do not apply.
func checkAppRoute(token, app string, appid *AppIDSource, component string, allow []string, inject *InjectPlace) error {
	if !isAppKind(token) {
		if app != "" || inject != nil {
			return fmt.Errorf("app and inject apply to token client_token or app_access_token, not to token %s", orDefault(token, "authorizer"))
		}
		return nil
	}
	switch {
	case app != "" && appid != nil:
		return errors.New("app names the app of every request; appid reads it from each request: use one")
	case component != "":
		return fmt.Errorf("component selects a TP; token %s is the app's own token: remove component", token)
	case len(allow) > 0:
		return fmt.Errorf("allow lists authorizer appids; with token %s the apps configured in the tptoken app are the only ones served: remove allow", token)
	}
	return nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
