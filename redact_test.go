package tptoken

import (
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

const redactTok = "isvact.0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"

func TestHoldsSecretSeesEveryEscapedForm(t *testing.T) {
	half := redactTok[:10] + escapeEveryByte(redactTok[10:20], "%%%02X") + redactTok[20:]
	for _, tc := range []struct {
		name string
		s    string
		want bool
	}{
		{"raw", "a=" + redactTok, true},
		{"query-escaped", url.QueryEscape(redactTok), true},
		{"path-escaped", "/x/" + url.PathEscape(redactTok) + "/y", true},
		{"every byte, upper hex", escapeEveryByte(redactTok, "%%%02X"), true},
		{"every byte, lower hex", escapeEveryByte(redactTok, "%%%02x"), true},
		{"escaped twice", url.QueryEscape(escapeEveryByte(redactTok, "%%%02X")), true},
		{"some bytes escaped", half, true},
		{"malformed escapes around it", "%zz%" + escapeEveryByte(redactTok, "%%%02X") + "%4", true},
		{"cut short", redactTok[:len(redactTok)-1], false},
		{"another token", strings.Replace(redactTok, "0a1b", "0a1c", 1), false},
		{"short value", "text/html", false},
		{"escaped, but another token", escapeEveryByte(strings.Replace(redactTok, "0a1b", "0a1c", 1), "%%%02X"), false},
	} {
		if got := holdsSecret(tc.s, redactTok); got != tc.want {
			t.Errorf("%s: holdsSecret = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestRedactHeaderCleansRedirectsAndDropsEveryOtherCarrier(t *testing.T) {
	h := http.Header{
		"Location":                 {"/dir/?a=1&b=%2F&component_appid=tt00tp&authorizer_access_token=" + redactTok + "#f"},
		"Content-Location":         {"/c/" + url.PathEscape(redactTok) + "?x=1"},
		"Link":                     {"</a.css>; rel=preload", "</next?t=" + url.QueryEscape(redactTok) + ">; rel=next"},
		"Refresh":                  {"0; url=/x?t=" + redactTok},
		"X-Echo":                   {redactTok},
		"X-Tok-" + redactTok[:20]:  {"short names are fine"},
		"X-Named-" + redactTok:     {"1"},
		"Content-Type":             {"application/json"},
		"Set-Cookie":               {"a=1", "t=" + escapeEveryByte(redactTok, "%%%02x")},
		"Location-Without-Token-X": {"/dir/?component_appid=tt00tp"},
	}
	changed := redactHeader(h, redactTok)
	want := http.Header{
		"Location":                 {"/dir/?a=1&b=%2F#f"},
		"Link":                     {"</a.css>; rel=preload"},
		"X-Tok-" + redactTok[:20]:  {"short names are fine"},
		"Content-Type":             {"application/json"},
		"Set-Cookie":               {"a=1"},
		"Location-Without-Token-X": {"/dir/?component_appid=tt00tp"},
	}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("after redaction:\n%v\nwant\n%v", h, want)
	}
	if len(changed) != 7 {
		t.Fatalf("changed headers reported: %v", changed)
	}
	for _, name := range changed {
		if strings.Contains(name, redactTok) {
			t.Fatal("a reported header name holds the token")
		}
	}

	// Without the token nothing changes, and nothing is reported.
	clean := http.Header{"Location": {"/dir/?a=1&component_appid=tt00tp"}, "Content-Type": {"application/json"}}
	before := clean.Clone()
	if changed := redactHeader(clean, redactTok); changed != nil || !reflect.DeepEqual(clean, before) {
		t.Fatalf("a header without the token changed: %v", clean)
	}
}
