package tptoken

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

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
			if got := inspect(resp, tc.family, tc.component); got != tc.want {
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

func TestRequestBodyIsWholeOnEveryAttemptAndReplayableOnlyWhenSmall(t *testing.T) {
	read := func(b *bodyCopy, req *http.Request) string {
		if b == nil {
			got, _ := io.ReadAll(req.Body)
			return string(got)
		}
		got, _ := io.ReadAll(b.reader())
		return string(got)
	}
	// A small body is read once and sent whole on every attempt (reverse_proxy
	// calls RoundTrip again after a dial error), and on the replay.
	small := "small body"
	req, _ := http.NewRequest(http.MethodPost, "http://x/", strings.NewReader(small))
	inj := &injection{comp: &component{appID: e2eComponent}, maxReplayBody: 64}
	for attempt := range 3 {
		b, replayable := inj.requestBody(req, zap.NewNop())
		if !replayable || read(b, req) != small {
			t.Fatalf("attempt %d: replayable %v", attempt, replayable)
		}
	}
	// A large body of unknown length: the part read to find its size is sent in
	// front of the rest, and a retry after a dial error (nothing sent) still
	// sends all of it.
	large := strings.Repeat("y", 1000)
	req, _ = http.NewRequest(http.MethodPost, "http://x/", io.NopCloser(strings.NewReader(large)))
	inj = &injection{comp: &component{appID: e2eComponent}, maxReplayBody: 64}
	if _, replayable := inj.requestBody(req, zap.NewNop()); replayable {
		t.Fatal("a body over max_replay_body was made replayable")
	}
	b, _ := inj.requestBody(req, zap.NewNop()) // the retry, before anything was sent
	if got := read(b, req); got != large {
		t.Fatalf("the retried body has %d bytes, want %d", len(got), len(large))
	}
	// Replay off: the body is not touched at all.
	req, _ = http.NewRequest(http.MethodPost, "http://x/", strings.NewReader(small))
	inj = &injection{comp: &component{appID: e2eComponent}, maxReplayBody: -1}
	if b, replayable := inj.requestBody(req, zap.NewNop()); b != nil || replayable || read(b, req) != small {
		t.Fatal("with replay off the body was read or replaced")
	}
}
