package tptoken

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// The `appid token` carrier. A legacy app migrated without a code change sends
// the authorizer appid where its token used to go, and where that is depends
// on the client (docs/sdk-compat.md §Where the token travels): the official
// SDK puts it in header access-token (most methods), access_token or x-token;
// v1 calls carry it in query authorizer_access_token (component_access_token
// on TP-level APIs). The carrier reads every one of these places and removes
// them all, so that the only token forwarded is the one the transport puts
// where the route's family takes it: never a client copy beside it.

// tokenSlotHeaders are the request headers a token travels in (canonical
// names). Caddy drops a header whose name has '_' before any handler runs,
// unless its server lists it in expected_underscore_headers: Access_token is
// read where it is let through.
var tokenSlotHeaders = [...]string{"Access-Token", "Access_token", "X-Token"}

// tokenSlotParams are the query parameters a token travels in; each contains
// "access_token", which makes the test for their absence one search.
var tokenSlotParams = [...]string{"authorizer_access_token", "component_access_token", "access_token"}

// takeTokenSlot removes every token slot from r and returns the value they
// hold ("" when none holds one). When they hold different values, conflict
// names the places (never the values) and value is "".
func takeTokenSlot(r *http.Request) (value, conflict string) {
	var held [len(tokenSlotHeaders) + len(tokenSlotParams)]bool // places that held a value
	differ := false
	note := func(place int, v string) {
		v = strings.TrimSpace(v)
		if v == "" {
			return
		}
		held[place] = true
		if value == "" {
			value = v
		} else if v != value {
			differ = true
		}
	}
	for i, name := range tokenSlotHeaders {
		vs, ok := r.Header[name]
		if !ok {
			continue
		}
		delete(r.Header, name)
		for _, v := range vs {
			note(i, v)
		}
	}
	if raw := r.URL.RawQuery; raw != "" && (strings.Contains(raw, "access_token") || strings.IndexByte(raw, '%') >= 0) {
		var b strings.Builder
		b.Grow(len(raw))
		found := false
		for seg := range strings.SplitSeq(raw, "&") {
			k, v, _ := strings.Cut(seg, "=")
			i := slotParam(k)
			if i < 0 {
				if b.Len() > 0 {
					b.WriteByte('&')
				}
				b.WriteString(seg)
				continue
			}
			found = true
			if uv, err := url.QueryUnescape(v); err == nil {
				v = uv
			}
			note(len(tokenSlotHeaders)+i, v)
		}
		if found {
			r.URL.RawQuery = b.String()
			r.RequestURI = r.URL.RequestURI()
		}
	}
	if !differ {
		return value, ""
	}
	var places []string
	for i, h := range held {
		switch {
		case !h:
		case i < len(tokenSlotHeaders):
			places = append(places, "header "+strings.ToLower(tokenSlotHeaders[i]))
		default:
			places = append(places, "query "+tokenSlotParams[i-len(tokenSlotHeaders)])
		}
	}
	return "", strings.Join(places, ", ")
}

// slotParam is the index in tokenSlotParams of a raw query key, or -1.
func slotParam(rawKey string) int {
	for i, p := range tokenSlotParams {
		if queryKeyIs(rawKey, p) {
			return i
		}
	}
	return -1
}

// recorded reports whether the engine's answer to a Token call shows that
// storage has a record of the appid: a token, or a failure about the state of
// the record. Any other failure (no record, storage unreadable, ...) leaves
// the value unconfirmed.
func recorded(err error) bool {
	if err == nil {
		return true
	}
	switch tokensource.KindOf(err) {
	case tokensource.KindUnauthorized, tokensource.KindFamilyMismatch:
		return true
	}
	return false
}

// errSlotConflict: the token slots of a request held different values.
type errSlotConflict string

func (e errSlotConflict) Error() string {
	return "the places where a token goes hold different values (" + string(e) + "): send the authorizer appid in one of them, or the same in each"
}

// unconfirmed is a failure about a value read from the token slot that is
// not known to be an appid: storage has no record of it (or could not be
// read), or the route does not allow it. It may be a token (an app not migrated yet sends its old one), so
// every message names it by its length and fingerprint only, as the admin API
// and the CLI name an appid they have no record of. err keeps its kind.
type unconfirmed struct {
	err   error
	value string
}

func (u unconfirmed) Error() string { return u.hide(u.err.Error()) }
func (u unconfirmed) Unwrap() error { return u.err }

// hide replaces the value in s.
func (u unconfirmed) hide(s string) string {
	return strings.ReplaceAll(s, u.value, fmt.Sprintf("[the value sent where the token goes: %d characters, fingerprint %s]",
		len(u.value), tokensource.Secret(u.value).Fingerprint()))
}
