package tptoken

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// Answers inspected for a code that rejects the token sent.

func TestInspectFindsInvalidTokenCodesOnlyInSmallJSONAnswers(t *testing.T) {
	gz := func(s string) []byte {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		_, _ = w.Write([]byte(s))
		_ = w.Close()
		return b.Bytes()
	}
	v1, v2 := tokensource.V1, tokensource.V2
	big := `{"errno":40020,"pad":"` + strings.Repeat("x", maxInspect) + `"}`
	cases := []struct {
		name      string
		ctype     string
		encoding  string
		body      []byte
		length    int64 // -1: unknown (chunked)
		family    tokensource.Family
		component bool
		want      int
	}{
		{"v1 40020", "application/json", "", []byte(`{"errno":40020,"message":"authorizer_access_token 不正确或者已过期"}`), 0, v1, false, 40020},
		{"v2 28001003", "application/json; charset=utf-8", "", []byte(`{"err_no":28001003,"err_msg":"access_token无效","log_id":"x"}`), 0, v2, false, 28001003},
		{"v2 28001008 chunked", "application/json", "", []byte(`{"err_no":28001008,"err_msg":"过期"}`), -1, v2, false, 28001008},
		{"gzip", "application/json", "gzip", gz(`{"errno":40020}`), 0, v1, false, 40020},
		{"success mentioning the code", "application/json", "", []byte(`{"errno":0,"data":{"n":40020}}`), 0, v1, false, 0},
		{"the code nested in data", "application/json", "", []byte(`{"errno":0,"data":{"errno":40020}}`), 0, v1, false, 0},
		{"permission missing is not a token problem", "application/json", "", []byte(`{"errno":40036}`), 0, v1, false, 0},
		{"component code on an authorizer route", "application/json", "", []byte(`{"errno":40010}`), 0, v1, false, 0},
		{"component code on a component route", "application/json", "", []byte(`{"errno":40010}`), 0, v1, true, 40010},
		{"authorizer code on a v1 component route", "application/json", "", []byte(`{"errno":40020}`), 0, v1, true, 0},
		{"component code on a v2 component route", "application/json", "", []byte(`{"err_no":40009,"err_msg":"x"}`), 0, v2, true, 40009},
		{"header token code on a v2 component route", "application/json", "", []byte(`{"err_no":28001003}`), 0, v2, true, 28001003},
		// The other family's field, or the other family's code, never counts.
		{"v2 field on a v1 route", "application/json", "", []byte(`{"err_no":28001003}`), 0, v1, false, 0},
		{"v1 code in the v2 field on a v1 route", "application/json", "", []byte(`{"err_no":40020}`), 0, v1, false, 0},
		{"v1 field on a v2 route", "application/json", "", []byte(`{"errno":40020}`), 0, v2, false, 0},
		{"v2 code in the v1 field on a v2 route", "application/json", "", []byte(`{"errno":28001003}`), 0, v2, false, 0},
		{"both fields on a v2 route, v2 says fine", "application/json", "", []byte(`{"err_no":0,"errno":28001008}`), 0, v2, false, 0},
		{"not JSON", "text/html", "", []byte(`{"errno":40020}`), 0, v1, false, 0},
		{"NDJSON stream", "application/x-ndjson", "", []byte(`{"errno":40020}`), -1, v1, false, 0},
		{"too large", "application/json", "", []byte(big), 0, v1, false, 0},
		{"too large, unknown length", "application/json", "", []byte(big), -1, v1, false, 0},
		{"brotli is not decoded", "application/json", "br", []byte(`{"errno":40020}`), 0, v1, false, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			length := int64(len(tc.body))
			if tc.length == -1 {
				length = -1
			}
			h := http.Header{"Content-Type": {tc.ctype}}
			if tc.encoding != "" {
				h.Set("Content-Encoding", tc.encoding)
			}
			resp := &http.Response{StatusCode: 200, Header: h, ContentLength: length, Body: io.NopCloser(bytes.NewReader(tc.body))}
			if got, kind := inspect(resp, tc.family, tc.component); got != tc.want || (got != 0) != (kind == answerRejected) {
				t.Fatalf("code %d (kind %d), want %d rejecting the token", got, kind, tc.want)
			}
			// Whatever was read is given back: the client gets the exact answer.
			rest, _ := io.ReadAll(resp.Body)
			if !bytes.Equal(rest, tc.body) {
				t.Fatalf("the answer body changed (%d bytes, want %d)", len(rest), len(tc.body))
			}
		})
	}
}

// Answers saying the authorization is gone count on authorizer routes, in
// the family's own field and codes only.
func TestInspectFindsAuthorizationGoneCodesOnAuthorizerRoutesOnly(t *testing.T) {
	v1, v2 := tokensource.V1, tokensource.V2
	cases := []struct {
		name      string
		body      string
		family    tokensource.Family
		component bool
		want      int
	}{
		{"v1 40022", `{"errno":40022,"message":"此小程序未授权给第三方平台"}`, v1, false, 40022},
		{"v1 40004", `{"errno":40004,"message":"找不到相关授权小程序"}`, v1, false, 40004},
		{"v2 40022", `{"err_no":40022,"err_msg":"x","log_id":"y"}`, v2, false, 40022},
		{"v2 40004", `{"err_no":40004}`, v2, false, 40004},
		{"v2 28001014", `{"err_no":28001014,"err_msg":"应用未授权任何能力"}`, v2, false, 28001014},
		{"v2 28001016", `{"err_no":28001016,"err_msg":"当前应用已被封禁或下线"}`, v2, false, 28001016},
		{"v1 component route", `{"errno":40022}`, v1, true, 0},
		{"v2 component route", `{"err_no":40022}`, v2, true, 0},
		{"v2 field on a v1 route", `{"err_no":40022}`, v1, false, 0},
		{"v1 field on a v2 route", `{"errno":40022}`, v2, false, 0},
		{"a v2 code on a v1 route", `{"errno":28001016}`, v1, false, 0},
		{"nested in data", `{"errno":0,"data":{"errno":40022}}`, v1, false, 0},
		{"a success mentioning it", `{"err_no":0,"data":{"n":28001014}}`, v2, false, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
				ContentLength: int64(len(tc.body)), Body: io.NopCloser(strings.NewReader(tc.body))}
			code, kind := inspect(resp, tc.family, tc.component)
			if code != tc.want || (code != 0) != (kind == answerGone) {
				t.Fatalf("code %d (kind %d), want %d saying the authorization is gone", code, kind, tc.want)
			}
			if rest, _ := io.ReadAll(resp.Body); string(rest) != tc.body {
				t.Fatal("the answer body changed")
			}
		})
	}
}

// The body handed back after an inspection reads exactly like the original.
func TestInspectedBodyReadsAndWritesToLikeTheOriginal(t *testing.T) {
	body := `{"errno":0,"message":"success","data":{"appid":"tt01"}}`
	resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json; charset=utf-8"}},
		ContentLength: int64(len(body)), Body: io.NopCloser(strings.NewReader(body))}
	if code, _ := inspect(resp, tokensource.V1, false); code != 0 {
		t.Fatalf("code %d", code)
	}
	if _, ok := resp.Body.(io.WriterTo); !ok {
		t.Fatal("the inspected body lost WriteTo (io.Copy would take the slow path)")
	}
	var out bytes.Buffer
	if _, err := io.Copy(&out, resp.Body); err != nil || out.String() != body {
		t.Fatalf("read back %q, %v", out.String(), err)
	}
	if err := resp.Body.Close(); err != nil {
		t.Fatal(err)
	}

	// Read ends like net/http's body of a known length: io.EOF with the last
	// bytes, so reverse_proxy's copy loop (one allocation per turn) turns once.
	resp.Body = io.NopCloser(strings.NewReader(body))
	if code, _ := inspect(resp, tokensource.V1, false); code != 0 {
		t.Fatalf("code %d", code)
	}
	buf := make([]byte, 32<<10)
	n, err := resp.Body.Read(buf[:10])
	if n != 10 || err != nil {
		t.Fatalf("first 10 bytes: %d, %v", n, err)
	}
	n, err = resp.Body.Read(buf)
	if string(buf[:n]) != body[10:] || err != io.EOF {
		t.Fatalf("the rest in one read: %q, %v; want %q with io.EOF", buf[:n], err, body[10:])
	}
	if n, err = resp.Body.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("after the end: %d, %v", n, err)
	}
}
