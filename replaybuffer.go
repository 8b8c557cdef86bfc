package tptoken

import (
	"bytes"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Request bodies are buffered so that a request can be replayed once after
// the platform rejected its token (max_replay_body per route). What a body
// costs in memory is what arrived of it, never what its Content-Length
// announces: an idle connection announcing 1 MiB holds a few KiB. And all the
// bodies buffered at once share one budget (max_replay_memory), so that slow
// or idle clients cannot make the process hold more: a body that finds no room
// is streamed, without a replay, and counted.

// defaultMaxReplayMemory: 64 requests with a full 1 MiB body (the default
// max_replay_body), or thousands with the few KiB of a typical open-API body,
// at a memory cost any sidecar host affords.
const defaultMaxReplayMemory = 64 << 20

// firstChunk is the buffer a body is first read into (or its announced length
// plus one, when smaller): the size of net/http's own read buffer, which every
// connection holds anyway. The buffer doubles as bytes fill it.
const firstChunk = 4 << 10

// replayMemory is the process's budget: configs overlap on a reload, and the
// requests of both draw on the one process's memory. Its limit is the
// max_replay_memory of the newest config.
var replayMemory = newReplayBudget(defaultMaxReplayMemory)

// replayMemoryFull logs, at most once a minute, that the budget refused a body.
var replayMemoryFull = &rate.Sometimes{First: 1, Interval: time.Minute}

type replayBudget struct {
	limit atomic.Int64
	used  atomic.Int64
}

func newReplayBudget(limit int64) *replayBudget {
	b := new(replayBudget)
	b.limit.Store(limit)
	return b
}

// take reserves n bytes, if the budget has room for them.
func (b *replayBudget) take(n int64) bool {
	if b.used.Add(n) > b.limit.Load() {
		b.used.Add(-n)
		return false
	}
	return true
}

// give returns n bytes taken earlier.
func (b *replayBudget) give(n int64) { b.used.Add(-n) }

// buffered is what readBuffered read of a body.
type buffered struct {
	buf      []byte
	reserved int64 // bytes of the budget held (the buffer's capacity)
	eof      bool  // the body ended within buf
	refused  bool  // the budget had no room to read further
	err      error // the body's read error
}

// readBuffered reads r until it ends or limit+1 bytes have arrived (more than
// limit: not replayable). Its buffer starts at firstChunk (or announced+1,
// when announced > 0 is smaller: one more, so that a body longer than
// announced shows) and doubles as bytes fill it, each growth first taken from
// budget; when the budget refuses, reading stops and the caller streams the
// rest behind what was read.
func readBuffered(r io.Reader, announced, limit int64, budget *replayBudget) (b buffered) {
	for {
		if len(b.buf) == cap(b.buf) {
			if int64(len(b.buf)) > limit {
				return b
			}
			size := int64(2 * cap(b.buf))
			if size == 0 {
				size = firstChunk
			}
			if announced > 0 && int64(cap(b.buf)) <= announced {
				size = min(size, announced+1)
			}
			size = min(size, limit+1)
			if !budget.take(size - int64(cap(b.buf))) {
				b.refused = true
				return b
			}
			b.reserved += size - int64(cap(b.buf))
			grown := make([]byte, len(b.buf), size)
			copy(grown, b.buf)
			b.buf = grown
		}
		n, err := r.Read(b.buf[len(b.buf):cap(b.buf)])
		b.buf = b.buf[:len(b.buf)+n]
		switch {
		case err == io.EOF:
			b.eof = true
			return b
		case err != nil:
			b.err = err
			return b
		}
	}
}

// requestBody is the body to send. A body of at most maxReplayBody is read
// once and kept (the request is then replayable); the first part of a larger
// one, or of one that replayMemory has no room for, is kept and sent in front
// of the rest. reverse_proxy calls RoundTrip again with the same request after
// a dial error, and the part already read is not in req.Body any more: every
// attempt gets the whole body from what is kept. The original body is never
// closed here (the server closes it).
func (inj *injection) requestBody(req *http.Request, logger *zap.Logger) (body *bodyCopy, replayable bool) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, inj.maxReplayBody >= 0
	}
	if !inj.bodyRead {
		inj.bodyRead = true
		if inj.maxReplayBody >= 0 && req.ContentLength <= inj.maxReplayBody {
			b := readBuffered(req.Body, req.ContentLength, inj.maxReplayBody, replayMemory)
			inj.prefix, inj.reserved = b.buf, b.reserved
			inj.complete = b.eof && b.err == nil && int64(len(b.buf)) <= inj.maxReplayBody
			if b.refused {
				countUnbuffered(inj.owner())
				replayMemoryFull.Do(func() {
					logger.Warn("max_replay_memory is taken by requests in flight: streaming request bodies without a replay (logged once a minute; see caddy_tptoken_replay_buffer_full_total)",
						zap.Int64("max_replay_memory", replayMemory.limit.Load()))
				})
			}
		}
	}
	switch {
	case inj.complete:
		return &bodyCopy{buf: inj.prefix, complete: true}, true
	case len(inj.prefix) == 0:
		return nil, false // nothing read: req.Body goes as it is
	}
	return &bodyCopy{buf: inj.prefix, rest: req.Body}, false
}

// release gives back what the request held of replayMemory. The handler calls
// it when the request ends.
func (inj *injection) release() {
	if inj.reserved > 0 {
		replayMemory.give(inj.reserved)
		inj.reserved = 0
	}
}

// bodyCopy is what an outgoing request sends as its body.
type bodyCopy struct {
	buf      []byte    // the whole body (complete) or its first part
	rest     io.Reader // the unread part (when not complete)
	complete bool
}

func (b *bodyCopy) reader() io.ReadCloser {
	if b.complete {
		return io.NopCloser(bytes.NewReader(b.buf))
	}
	if len(b.buf) == 0 {
		return io.NopCloser(b.rest)
	}
	return io.NopCloser(io.MultiReader(bytes.NewReader(b.buf), b.rest))
}
