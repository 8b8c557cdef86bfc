package tptoken

import (
	"net/url"
	"slices"
	"strings"
	"testing"
)

func TestTakeQueryParam(t *testing.T) {
	tests := []struct {
		name, raw, param string
		value, rest      string
		found            bool
	}{
		{"empty query", "", "appid", "", "", false},
		{"param absent", "a=1&b=2", "appid", "", "a=1&b=2", false},
		{"param absent, other escapes untouched", "a=%2F&b=x+y&c", "appid", "", "a=%2F&b=x+y&c", false},
		{"name only inside another key or a value", "xappid=1&appid_x=2&q=appid", "appid", "", "xappid=1&appid_x=2&q=appid", false},
		{"keys are case-sensitive", "APPID=tt01", "appid", "", "APPID=tt01", false},
		{"only param", "appid=tt01", "appid", "tt01", "", true},
		{"first param", "appid=tt01&a=1", "appid", "tt01", "a=1", true},
		{"last param", "a=1&appid=tt01", "appid", "tt01", "a=1", true},
		{
			"every occurrence removed, first value kept, others byte for byte in order",
			"a=%2F&appid=tt01&b=x+y&appid=tt02&c&d=%zz&e=%E4%BD%A0&appid",
			"appid", "tt01", "a=%2F&b=x+y&c&d=%zz&e=%E4%BD%A0", true,
		},
		{"value unescaped", "appid=tt%5F01&z=1", "appid", "tt_01", "z=1", true},
		{"plus in value is a space", "appid=a+b", "appid", "a b", "", true},
		{"malformed value kept raw for the appid check", "appid=%zz&z=1", "appid", "%zz", "z=1", true},
		{"param without value", "appid&a=1", "appid", "", "a=1", true},
		{"param with empty value", "appid=&a=1", "appid", "", "a=1", true},
		{"value with an equals sign", "appid=a=b", "appid", "a=b", "", true},
		{
			"percent-encoded key",
			"X%2DAuthorizer%2DAppid=tt01&z=1", "X-Authorizer-Appid", "tt01", "z=1", true,
		},
		{
			"lower-case percent-encoded key, plain and encoded both removed",
			"x%2dauthorizer%2dappid=tt01&x-authorizer-appid=tt02", "x-authorizer-appid", "tt01", "", true,
		},
		{"plus-encoded space in key", "tenant+id=tt01&z=1", "tenant id", "tt01", "z=1", true},
		{"percent-encoded space in key", "tenant%20id=tt01", "tenant id", "tt01", "", true},
		{"malformed escape in another key kept", "a%zz=1&appid=tt01", "appid", "tt01", "a%zz=1", true},
		{"empty segments between params kept", "a=1&&appid=tt01&b=2", "appid", "tt01", "a=1&&b=2", true},
		{"trailing ampersand kept", "appid=tt01&a=1&", "appid", "tt01", "a=1&", true},
		{"semicolon is not a separator", "a=1;appid=tt01", "appid", "", "a=1;appid=tt01", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			value, rest, found := takeQueryParam(tt.raw, tt.param)
			if value != tt.value || rest != tt.rest || found != tt.found {
				t.Errorf("takeQueryParam(%q, %q) = (%q, %q, %v), want (%q, %q, %v)",
					tt.raw, tt.param, value, rest, found, tt.value, tt.rest, tt.found)
			}
		})
	}
}

func TestInjectV1(t *testing.T) {
	const (
		comp = "tt_comp"
		auth = "authorizer_access_token"
		tok  = "TOKEN"
		ours = "component_appid=tt_comp&authorizer_access_token=TOKEN"
	)
	tests := []struct {
		name, raw, param, token, want string
	}{
		{"empty query", "", auth, tok, ours},
		{"client params kept byte for byte, ours appended", "a=%2F&b=x+y&c&d=%zz", auth, tok, "a=%2F&b=x+y&c&d=%zz&" + ours},
		{"client order kept, not sorted", "z=1&a=2&m=3", auth, tok, "z=1&a=2&m=3&" + ours},
		{
			"client credentials removed wherever they are",
			"authorizer_access_token=old&a=1&component_appid=evil&b=2&component_access_token=x&c=3",
			auth, tok, "a=1&b=2&c=3&" + ours,
		},
		{"repeated client token removed", "authorizer_access_token=a&authorizer_access_token=b", auth, tok, ours},
		{"credential key without value removed", "authorizer_access_token&a=1", auth, tok, "a=1&" + ours},
		{"credential key with empty value removed", "a=1&component_appid=", auth, tok, "a=1&" + ours},
		{"percent-encoded credential key removed", "authorizer%5Faccess%5Ftoken=old&a=%2F", auth, tok, "a=%2F&" + ours},
		{"lower-case hex escape removed", "component%5fappid=evil&a=1", auth, tok, "a=1&" + ours},
		{"fully escaped key removed", "%61%75thorizer_access_token=old", auth, tok, ours},
		{"escape elsewhere does not disturb the others", "a=%E4%BD%A0&component_access_token=x&b=x+y", auth, tok, "a=%E4%BD%A0&b=x+y&" + ours},
		{
			"keys that only contain a credential name kept",
			"my_component_appid=1&authorizer_access_token_x=2&q=authorizer_access_token",
			auth, tok, "my_component_appid=1&authorizer_access_token_x=2&q=authorizer_access_token&" + ours,
		},
		{"plus in a key is a space, not an underscore", "component+appid=1", auth, tok, "component+appid=1&" + ours},
		{"empty segments kept without credentials", "a=1&&b=2", auth, tok, "a=1&&b=2&" + ours},
		{"empty segments kept with credentials", "a=1&&authorizer_access_token=x&b=2", auth, tok, "a=1&&b=2&" + ours},
		{"trailing ampersand kept", "a=1&", auth, tok, "a=1&&" + ours},
		{
			"component token replaces every client credential",
			"authorizer_access_token=x&a=1&component_access_token=y",
			"component_access_token", tok, "a=1&component_appid=tt_comp&component_access_token=TOKEN",
		},
		{
			"token escaped",
			"a=1", auth, "0801121846+/=&?# x",
			"a=1&component_appid=tt_comp&authorizer_access_token=0801121846%2B%2F%3D%26%3F%23+x",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := injectV1(tt.raw, comp, tt.param, tt.token)
			if got != tt.want {
				t.Errorf("injectV1(%q, %q, %q, %q)\n got %q\nwant %q", tt.raw, comp, tt.param, tt.token, got, tt.want)
			}
			// Whatever the client sent, a parser sees our values only.
			q, _ := url.ParseQuery(got)
			if v := q["component_appid"]; len(v) != 1 || v[0] != comp {
				t.Errorf("component_appid parses as %q", v)
			}
			if v := q[tt.param]; len(v) != 1 || v[0] != tt.token {
				t.Errorf("%s parses as %q, want [%q]", tt.param, v, tt.token)
			}
		})
	}
}

func TestInjectV1EscapesComponentAppID(t *testing.T) {
	got := injectV1("", "tt comp&x", "authorizer_access_token", "t")
	if want := "component_appid=tt+comp%26x&authorizer_access_token=t"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

var v1Credentials = []string{"component_appid", "authorizer_access_token", "component_access_token"}

// clientKey is the key a lenient parser reads from a raw segment.
func clientKey(seg string) string {
	k, _, _ := strings.Cut(seg, "=")
	if u, err := url.QueryUnescape(k); err == nil {
		return u
	}
	return k
}

func FuzzInjectV1(f *testing.F) {
	for _, s := range []string{
		"", "a=1", "a=%2F&b=x+y&c", "authorizer_access_token=old&a=1",
		"component%5Fappid=x&component_access_token=y&z", "a=1&&b=2&", "&", "%zz=1&authorizer_access_token",
		"%61uthorizer_access_token=1;component_appid=2",
	} {
		f.Add(s, "TOKEN+/=", false)
		f.Add(s, "", true)
	}
	f.Fuzz(func(t *testing.T, raw, token string, component bool) {
		param := "authorizer_access_token"
		if component {
			param = "component_access_token"
		}
		got := injectV1(raw, "tt_comp", param, token)

		// Ours, once, at the end.
		tail := "&component_appid=tt_comp&" + param + "=" + url.QueryEscape(token)
		head, ok := strings.CutSuffix("&"+got, tail)
		if !ok {
			t.Fatalf("injectV1(%q) = %q: does not end with our parameters", raw, got)
		}
		var kept []string
		if head != "" {
			kept = strings.Split(head[1:], "&")
		}
		// No client credential before ours.
		for _, seg := range kept {
			if slices.Contains(v1Credentials, clientKey(seg)) {
				t.Fatalf("injectV1(%q) = %q: client credential %q kept", raw, got, seg)
			}
		}
		// The client's other segments, byte for byte, in their order.
		var want []string
		for seg := range strings.SplitSeq(raw, "&") {
			if !slices.Contains(v1Credentials, clientKey(seg)) {
				want = append(want, seg)
			}
		}
		if raw == "" {
			want = nil
		}
		if !slices.Equal(kept, want) {
			t.Fatalf("injectV1(%q) = %q: client segments %q, want %q", raw, got, kept, want)
		}
		// Go's parser sees our values only.
		q, _ := url.ParseQuery(got)
		if v := q["component_appid"]; len(v) != 1 || v[0] != "tt_comp" {
			t.Fatalf("injectV1(%q) = %q: component_appid parses as %q", raw, got, v)
		}
		if v := q[param]; len(v) != 1 || v[0] != token {
			t.Fatalf("injectV1(%q) = %q: %s parses as %q", raw, got, param, v)
		}
	})
}

func BenchmarkInjectV1(b *testing.B) {
	const token = "0801121846735a4a4d7a5a6a6b6c6d6e6f70717273747576777879304d4b4d4f" // 64 bytes, like a real one
	for _, bc := range []struct{ name, raw string }{
		{"empty", ""},
		{"plain", "page=1&page_size=20&status=1"},
		{"client token", "page=1&authorizer_access_token=stale&page_size=20"},
		{"escaped", "page=1&q=%E4%BD%A0%E5%A5%BD&page_size=20"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = injectV1(bc.raw, "tt_comp_0123456789", "authorizer_access_token", token)
			}
		})
	}
}

// queryEscape's fast path says exactly what url.QueryEscape would.
func TestQueryEscapeMatchesURLQueryEscapeForEveryByte(t *testing.T) {
	for c := range 256 {
		s := "tt0" + string([]byte{byte(c)}) + "Zz9-_.~"
		if got, want := queryEscape(s), url.QueryEscape(s); got != want {
			t.Fatalf("queryEscape(%q) = %q, url.QueryEscape = %q", s, got, want)
		}
	}
}
