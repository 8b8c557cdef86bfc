package tptoken

import (
	"net/url"
	"strings"
)

// The query is edited as bytes: the client's parameters keep their order and
// their exact escaping (url.Values.Encode would sort and re-escape them, which
// breaks upstreams that sign the query).

// takeQueryParam removes every occurrence of name from the raw query and returns
// the first value (unescaped), the rest of the query, and whether name was there.
func takeQueryParam(raw, name string) (value, rest string, found bool) {
	// Without the name in plain text, only an escaped key can match: %XX, or
	// '+' for a space (url.Values.Encode writes "a b" as a+b).
	if raw == "" || !strings.Contains(raw, name) && !strings.Contains(raw, "%") &&
		!(strings.Contains(raw, "+") && strings.Contains(name, " ")) {
		return "", raw, false
	}
	var b strings.Builder
	for seg := range strings.SplitSeq(raw, "&") {
		k, v, _ := strings.Cut(seg, "=")
		if queryKeyIs(k, name) {
			if !found {
				var err error
				if value, err = url.QueryUnescape(v); err != nil {
					// Keep the malformed value: the appid check then reports it,
					// rather than a misleading "no appid".
					value = v
				}
				found = true
			}
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(seg)
	}
	if !found {
		return "", raw, false
	}
	return value, b.String(), true
}

// queryKeyIs compares a raw (possibly escaped) query key with name.
func queryKeyIs(rawKey, name string) bool {
	if rawKey == name {
		return true
	}
	if !strings.ContainsAny(rawKey, "%+") {
		return false
	}
	k, err := url.QueryUnescape(rawKey)
	return err == nil && k == name
}

// v1 query parameters that carry credentials; client-sent copies are removed.
var v1CredentialParams = [...]string{"component_appid", "authorizer_access_token", "component_access_token"}

// injectV1 returns raw without any client-sent credential parameter, followed by
// component_appid and the token parameter.
func injectV1(raw, componentAppID, tokenParam, token string) string {
	var b strings.Builder
	b.Grow(len(raw) + len(componentAppID) + len(tokenParam) + len(token) + 20)
	if writeWithoutCredentials(&b, raw) > 0 {
		b.WriteByte('&')
	}
	b.WriteString("component_appid=")
	b.WriteString(queryEscape(componentAppID))
	b.WriteByte('&')
	b.WriteString(tokenParam)
	b.WriteByte('=')
	b.WriteString(queryEscape(token))
	return b.String()
}

// withoutCredentials returns raw without any v1 credential parameter (byte for
// byte otherwise): what a v2 route forwards, so that a client cannot slip a v1
// token past the injection.
func withoutCredentials(raw string) string {
	if raw == "" || !hasCredentialParam(raw) || !holdsCredentialKey(raw) {
		return raw
	}
	var b strings.Builder
	b.Grow(len(raw))
	writeWithoutCredentials(&b, raw)
	return b.String()
}

// writeWithoutCredentials writes raw to b without its credential parameters
// and returns the number of client segments written, empty ones included: raw
// is kept byte for byte.
func writeWithoutCredentials(b *strings.Builder, raw string) (kept int) {
	if raw == "" {
		return 0
	}
	if !hasCredentialParam(raw) {
		b.WriteString(raw)
		return 1
	}
	for seg := range strings.SplitSeq(raw, "&") {
		k, _, _ := strings.Cut(seg, "=")
		if isCredentialKey(k) {
			continue
		}
		if kept > 0 {
			b.WriteByte('&')
		}
		b.WriteString(seg)
		kept++
	}
	return kept
}

// queryEscape is url.QueryEscape with a fast path for the usual case: appids and
// tokens made only of unreserved characters need no escaping. It runs on every
// request over the token (64 characters or more): one table load per byte.
func queryEscape(s string) string {
	for i := 0; i < len(s); i++ {
		if !unreserved[s[i]] {
			return url.QueryEscape(s)
		}
	}
	return s
}

// unreserved marks the bytes url.QueryEscape leaves as they are.
var unreserved = func() (t [256]bool) {
	for c := range 256 {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~'
	}
	return t
}()

func hasCredentialParam(raw string) bool {
	if strings.IndexByte(raw, '%') >= 0 {
		return true // an escaped key may hide one: check each key
	}
	if strings.IndexByte(raw, '_') < 0 {
		return false // every credential name has one
	}
	for _, p := range v1CredentialParams {
		if strings.Contains(raw, p) {
			return true
		}
	}
	return false
}

// holdsCredentialKey reports whether a segment of raw has a credential key.
func holdsCredentialKey(raw string) bool {
	for seg := range strings.SplitSeq(raw, "&") {
		k, _, _ := strings.Cut(seg, "=")
		if isCredentialKey(k) {
			return true
		}
	}
	return false
}

func isCredentialKey(rawKey string) bool {
	for _, p := range v1CredentialParams {
		if queryKeyIs(rawKey, p) {
			return true
		}
	}
	return false
}
