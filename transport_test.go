package tptoken

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestInspectFindsInvalidTokenCodesOnlyInSmallJSONAnswers(t *testing.T) {
	gz := func(s string) []byte {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		_, _ = w.Write([]byte(s))
		_ = w.Close()
		return b.Bytes()
	}
	big := `{"errno":40020,"pad":"` + strings.Repeat("x", maxInspect) + `"}`
	cases := []struct {
		name      string
		ctype     string
		encoding  string
		body      []byte
		length    int64 // -1: unknown (chunked)
		component bool
		want      int
	}{
		{"v1 40020", "application/json", "", []byte(`{"errno":40020,"message":"authorizer_access_token 不正确或者已过期"}`), 0, false, 40020},
		{"v2 28001003", "application/json; charset=utf-8", "", []byte(`{"err_no":28001003,"err_msg":"access_token无效","log_id":"x"}`), 0, false, 28001003},
		{"v2 28001008 chunked", "application/json", "", []byte(`{"err_no":28001008,"err_msg":"过期"}`), -1, false, 28001008},
		{"gzip", "application/json", "gzip", gz(`{"errno":40020}`), 0, false, 40020},
		{"success mentioning the code", "application/json", "", []byte(`{"errno":0,"data":{"n":40020}}`), 0, false, 0},
		{"permission missing is not a token problem", "application/json", "", []byte(`{"errno":40036}`), 0, false, 0},
		{"component code on an authorizer route", "application/json", "", []byte(`{"errno":40010}`), 0, false, 0},
		{"component code on a component route", "application/json", "", []byte(`{"errno":40010}`), 0, true, 40010},
		{"not JSON", "text/html", "", []byte(`{"errno":40020}`), 0, false, 0},
		{"NDJSON stream", "application/x-ndjson", "", []byte(`{"errno":40020}`), -1, false, 0},
		{"too large", "application/json", "", []byte(big), 0, false, 0},
		{"too large, unknown length", "application/json", "", []byte(big), -1, false, 0},
		{"brotli is not decoded", "application/json", "br", []byte(`{"errno":40020}`), 0, false, 0},
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
			if got := inspect(resp, tc.component); got != tc.want {
				t.Fatalf("code %d, want %d", got, tc.want)
			}
			// Whatever was read is given back: the client gets the exact answer.
			rest, _ := io.ReadAll(resp.Body)
			if !bytes.Equal(rest, tc.body) {
				t.Fatalf("the answer body changed (%d bytes, want %d)", len(rest), len(tc.body))
			}
		})
	}
}

func TestBufferBodyKeepsLargeBodiesIntactAndUnreplayable(t *testing.T) {
	small := "small body"
	req, _ := http.NewRequest(http.MethodPost, "http://x/", strings.NewReader(small))
	b, ok := bufferBody(req, 64)
	if !ok || string(b) != small {
		t.Fatalf("small body: %q %v", b, ok)
	}
	large := strings.Repeat("y", 1000)
	req, _ = http.NewRequest(http.MethodPost, "http://x/", io.NopCloser(strings.NewReader(large))) // unknown length
	if _, ok := bufferBody(req, 64); ok {
		t.Fatal("a body over the limit was buffered for replay")
	}
	if got, _ := io.ReadAll(req.Body); string(got) != large {
		t.Fatal("the large body lost the part read while checking its size")
	}
}
