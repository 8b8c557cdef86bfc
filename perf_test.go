package tptoken

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// The request path's fast paths must say exactly what the slow ones would.

func TestQueryEscapeMatchesURLQueryEscapeForEveryByte(t *testing.T) {
	for c := range 256 {
		s := "tt0" + string([]byte{byte(c)}) + "Zz9-_.~"
		if got, want := queryEscape(s), url.QueryEscape(s); got != want {
			t.Fatalf("queryEscape(%q) = %q, url.QueryEscape = %q", s, got, want)
		}
	}
}

func TestInvalidCodePrefilterCoversEveryRejectedTokenCode(t *testing.T) {
	var all []string
	for _, g := range invalidCodes {
		for _, c := range g.codes {
			if !bytes.HasPrefix(c, g.prefix) {
				t.Fatalf("code %s is filed under prefix %s", c, g.prefix)
			}
			all = append(all, string(c))
		}
	}
	want := map[string]bool{"40020": true, "28001003": true, "28001008": true, "40009": true, "40010": true}
	if len(all) != len(want) {
		t.Fatalf("codes %v, want %v", all, want)
	}
	for _, c := range all {
		if !want[c] {
			t.Fatalf("unexpected code %s", c)
		}
	}
	for code := range want {
		body := []byte(`{"errno":` + code + `,"message":"x"}`)
		if !holdsInvalidCode(body) {
			t.Fatalf("%s not found", body)
		}
		if strings.Contains(code, "2800100") {
			body = []byte(`{"err_no":` + code + `,"err_msg":"x","log_id":"1"}`)
		}
		n := invalidTokenCode(body, true)
		if cls := tokensource.ClassifyCode(n); n == 0 || cls != tokensource.ClassInvalidAuthorizerToken && cls != tokensource.ClassComponentToken {
			t.Fatalf("%s: code %d, class %v", body, n, cls)
		}
	}
	if holdsInvalidCode([]byte(`{"errno":0,"message":"success","data":{"n":4002,"m":2800100}}`)) {
		t.Fatal("a prefix alone counted as a code")
	}
}

func TestInspectedBodyReadsAndWritesToLikeTheOriginal(t *testing.T) {
	body := `{"errno":0,"message":"success","data":{"appid":"tt01"}}`
	resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json; charset=utf-8"}},
		ContentLength: int64(len(body)), Body: io.NopCloser(strings.NewReader(body))}
	if code := inspect(resp, false); code != 0 {
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
	if code := inspect(resp, false); code != 0 {
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

func TestReadUpToReadsWhatIOReadAllReads(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 300) // 3,000 bytes
	readers := map[string]func(b []byte) io.Reader{
		"plain":      func(b []byte) io.Reader { return bytes.NewReader(b) },
		"one byte":   func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) },
		"data + EOF": func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) },
		"error": func(b []byte) io.Reader {
			return io.MultiReader(bytes.NewReader(b[:len(b)/2]), iotest.ErrReader(io.ErrClosedPipe))
		},
	}
	for name, mk := range readers {
		for _, size := range []int{0, 1, 1000, 1024, 1025, 3000} {
			for _, announced := range []int64{-1, 0, int64(size), int64(size) - 1, int64(size) + 1, 5000} {
				for _, limit := range []int64{1025, 4097} {
					want, werr := io.ReadAll(io.LimitReader(mk(data[:size]), limit))
					got, gerr := readUpTo(mk(data[:size]), announced, limit)
					if !bytes.Equal(got, want) || (gerr == nil) != (werr == nil) {
						t.Fatalf("%s, %d bytes announced as %d, limit %d: got %d bytes, %v; io.ReadAll: %d bytes, %v",
							name, size, announced, limit, len(got), gerr, len(want), werr)
					}
				}
			}
		}
	}
}
