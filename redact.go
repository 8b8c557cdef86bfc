package tptoken

import (
	"io"
	"net/http"
	"strings"
)

// An upstream answer may carry the injected token back in its headers: a
// redirect that keeps the query (Go's ServeMux and most frameworks do, for a
// trailing slash) puts the v1 query, token included, in Location; an upstream
// may echo the access-token header anywhere. The transport cleans every header
// of the answer before reverse_proxy sees it, so neither the client, nor
// reverse_proxy's debug log, nor the access log (resp_headers) gets the token.
// The cost on an answer without the token is one substring search per header
// value, and most values are shorter than a token.

// redactHeader removes secret, raw or percent-escaped, from h. From a
// URL-valued header (Location, Content-Location) the query parameters holding
// it and the other v1 credential parameters are removed, so that a redirect
// stays usable: following it goes through tptoken again, which injects a token
// anew. Any other value holding it is dropped, and so is a header whose name
// holds it. It returns the names of the headers it changed.
func redactHeader(h http.Header, secret string) (changed []string) {
	if secret == "" {
		return nil
	}
	for name, vs := range h {
		if holdsSecret(name, secret) {
			delete(h, name)
			changed = append(changed, "(a header named with the token)")
			continue
		}
		dirty := false
		for i := 0; i < len(vs); i++ {
			if !holdsSecret(vs[i], secret) {
				continue
			}
			dirty = true
			if name == "Location" || name == "Content-Location" {
				if clean, ok := urlWithoutSecret(vs[i], secret); ok {
					vs[i] = clean
					continue
				}
			}
			vs = append(vs[:i], vs[i+1:]...)
			i--
		}
		if !dirty {
			continue
		}
		changed = append(changed, name)
		if len(vs) == 0 {
			delete(h, name)
		} else {
			h[name] = vs
		}
	}
	return changed
}

// urlWithoutSecret removes from a URL reference the query parameters that hold
// secret and the v1 credential parameters, keeping the rest byte for byte. It
// fails when secret is elsewhere (path, fragment): no safe form is left then.
func urlWithoutSecret(v, secret string) (string, bool) {
	rest, frag, hasFrag := strings.Cut(v, "#")
	base, query, hasQuery := strings.Cut(rest, "?")
	var b strings.Builder
	b.WriteString(base)
	if hasQuery {
		kept := 0
		for seg := range strings.SplitSeq(query, "&") {
			k, _, _ := strings.Cut(seg, "=")
			if isCredentialKey(k) || holdsSecret(seg, secret) {
				continue
			}
			if kept == 0 {
				b.WriteByte('?')
			} else {
				b.WriteByte('&')
			}
			b.WriteString(seg)
			kept++
		}
	}
	if hasFrag {
		b.WriteByte('#')
		b.WriteString(frag)
	}
	clean := b.String()
	return clean, !holdsSecret(clean, secret)
}

// holdsSecret reports whether s holds secret as it is, or percent-escaped in
// any way (query- or path-escaped, some bytes or all, upper or lower case hex,
// escaped again up to three times). Malformed escapes do not hide it: they are
// left as they are while the valid ones around them are decoded.
func holdsSecret(s, secret string) bool {
	if len(s) < len(secret) {
		return false // an escaped form is never shorter
	}
	if strings.Contains(s, secret) {
		return true
	}
	for range 4 {
		if strings.IndexByte(s, '%') < 0 {
			return false
		}
		d := percentDecode(s)
		if len(d) == len(s) || len(d) < len(secret) {
			return false // nothing was decoded, or too short now
		}
		if strings.Contains(d, secret) {
			return true
		}
		s = d
	}
	return false
}

// percentDecode decodes every valid %XX of s and leaves anything else.
func percentDecode(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// trailerRedactor cleans an answer's trailers, which arrive with the end of its
// body, before reverse_proxy copies them to the client.
type trailerRedactor struct {
	io.ReadCloser
	resp   *http.Response
	secret string
}

func (t *trailerRedactor) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if err == io.EOF {
		redactHeader(t.resp.Trailer, t.secret)
	}
	return n, err
}
