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

func TestInspectedBodyReadsAndWritesToLikeTheOriginal(t *testing.T) {
	body := `{"errno":0,"message":"success","data":{"appid":"tt01"}}`
	resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json; charset=utf-8"}},
		ContentLength: int64(len(body)), Body: io.NopCloser(strings.NewReader(body))}
	if code := inspect(resp, tokensource.V1, false); code != 0 {
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
	if code := inspect(resp, tokensource.V1, false); code != 0 {
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

func TestReadBufferedReadsWhatIOReadAllReads(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 1000) // 10,000 bytes
	readers := map[string]func(b []byte) io.Reader{
		"plain":      func(b []byte) io.Reader { return bytes.NewReader(b) },
		"one byte":   func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) },
		"data + EOF": func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) },
		"error": func(b []byte) io.Reader {
			return io.MultiReader(bytes.NewReader(b[:len(b)/2]), iotest.ErrReader(io.ErrClosedPipe))
		},
	}
	for name, mk := range readers {
		for _, size := range []int{0, 1, 1000, 1024, 1025, 4096, 4097, 10000} {
			for _, announced := range []int64{-1, 0, int64(size), int64(size) - 1, int64(size) + 1, 1 << 20} {
				for _, limit := range []int64{1024, 4096, 8192} {
					want, werr := io.ReadAll(io.LimitReader(mk(data[:size]), limit+1))
					budget := newReplayBudget(1 << 20)
					got := readBuffered(mk(data[:size]), announced, limit, budget)
					if !bytes.Equal(got.buf, want) || (got.err == nil) != (werr == nil) || got.refused {
						t.Fatalf("%s, %d bytes announced as %d, limit %d: got %d bytes, %v; io.ReadAll: %d bytes, %v",
							name, size, announced, limit, len(got.buf), got.err, len(want), werr)
					}
					if got.reserved != int64(cap(got.buf)) || budget.used.Load() != got.reserved {
						t.Fatalf("%s, %d bytes: %d reserved, budget holds %d, buffer capacity %d",
							name, size, got.reserved, budget.used.Load(), cap(got.buf))
					}
					if cap(got.buf) > 2*max(len(got.buf), firstChunk) {
						t.Fatalf("%s, %d bytes announced as %d: a %d-byte buffer", name, size, announced, cap(got.buf))
					}
				}
			}
		}
	}
}

// The memory a body holds is what arrived of it, whatever its Content-Length
// says, and the shared budget caps what all bodies hold together.
func TestReadBufferedHoldsWhatArrivedWithinTheBudget(t *testing.T) {
	budget := newReplayBudget(64 << 10)
	// 100 bytes of a body announced as 1 MiB, then the client stalls (here: the
	// read fails, as when the server's read timeout ends it).
	stalled := io.MultiReader(strings.NewReader(strings.Repeat("x", 100)), iotest.ErrReader(io.ErrUnexpectedEOF))
	b := readBuffered(stalled, 1<<20, 1<<20, budget)
	if len(b.buf) != 100 || cap(b.buf) > firstChunk || b.reserved != int64(cap(b.buf)) {
		t.Fatalf("a stalled 1 MiB body holds %d bytes (%d read, %d reserved)", cap(b.buf), len(b.buf), b.reserved)
	}
	budget.give(b.reserved)
	if budget.used.Load() != 0 {
		t.Fatalf("budget holds %d after the release", budget.used.Load())
	}

	// Bodies beyond the budget stop where it ends: what was read goes first,
	// the rest streams.
	body := bytes.Repeat([]byte("y"), 48<<10)
	first := readBuffered(bytes.NewReader(body), int64(len(body)), 1<<20, budget)
	if !first.eof || first.refused || len(first.buf) != len(body) {
		t.Fatalf("first body: %d bytes, eof %v, refused %v", len(first.buf), first.eof, first.refused)
	}
	r := bytes.NewReader(body)
	second := readBuffered(r, int64(len(body)), 1<<20, budget)
	if !second.refused || second.eof || budget.used.Load() > 64<<10 {
		t.Fatalf("second body: refused %v, eof %v, budget holds %d of %d", second.refused, second.eof, budget.used.Load(), 64<<10)
	}
	rest, _ := io.ReadAll(r)
	if !bytes.Equal(append(second.buf, rest...), body) {
		t.Fatal("what was read and the rest are not the body")
	}
	budget.give(first.reserved)
	budget.give(second.reserved)
	if budget.used.Load() != 0 {
		t.Fatalf("budget holds %d after the releases", budget.used.Load())
	}
}
