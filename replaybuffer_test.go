package tptoken

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"

	"go.uber.org/zap"
)

// The bodies kept for a replay: what is read and sent, within the replay
// memory budget.

// readBuffered, the fast path, reads exactly what io.ReadAll would.
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
