package tptoken

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

// Unsigned input must reach nothing: a push whose signature does not verify
// makes no platform call, touches no storage (not even a read) and allocates
// memory bounded by the 64 KiB body limit, whatever it announces or holds.

// countingStore is a Store that counts every use.
type countingStore struct{ ops atomic.Int64 }

func (s *countingStore) Lock(context.Context, string) error   { s.ops.Add(1); return nil }
func (s *countingStore) Unlock(context.Context, string) error { s.ops.Add(1); return nil }
func (s *countingStore) Store(context.Context, string, []byte) error {
	s.ops.Add(1)
	return nil
}
func (s *countingStore) Load(context.Context, string) ([]byte, error) {
	s.ops.Add(1)
	return nil, fs.ErrNotExist
}
func (s *countingStore) Delete(context.Context, string) error { s.ops.Add(1); return nil }
func (s *countingStore) List(context.Context, string, bool) ([]string, error) {
	s.ops.Add(1)
	return nil, nil
}

type unsignedRig struct {
	ev    *Events
	store *countingStore
	calls *atomic.Int64
	push  *push.Crypto
}

func newUnsignedRig(t testing.TB) *unsignedRig {
	var calls atomic.Int64
	platform := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "no call expected", http.StatusTeapot)
	}))
	t.Cleanup(platform.Close)
	store := &countingStore{}
	engine, err := tokensource.New(tokensource.Config{ComponentAppID: e2eComponent, ComponentSecret: e2eSecret,
		Endpoint: platform.URL, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = engine.Close() })
	pc, err := push.NewCrypto(e2eMsgToken, e2eAESKey, e2eComponent)
	if err != nil {
		t.Fatal(err)
	}
	ev := &Events{logger: zap.NewNop(), refusals: newRefusalLog(zap.NewNop()),
		comps: []*component{{appID: e2eComponent, engine: engine, push: pc, state: newStateSigner(e2eSecret, e2eComponent)}}}
	return &unsignedRig{ev: ev, store: store, calls: &calls, push: pc}
}

// post delivers body, announcing contentLength, and returns the status.
func (rg *unsignedRig) post(body []byte, contentLength int64) int {
	req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
	req.ContentLength = contentLength
	rec := httptest.NewRecorder()
	_ = rg.ev.ServeHTTP(rec, req, nil)
	return rec.Code
}

// signedPush is a genuine push, to derive forgeries from.
func signedPush(t testing.TB, pc *push.Crypto) []byte {
	plain, _ := json.Marshal(authorizedPayload("tt01app", "0123456789abcdef0123456789abcdef01234567"))
	b, err := pc.Seal(plain, strconv.FormatInt(time.Now().Unix(), 10), "5521")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func withField(t testing.TB, body []byte, field string, v any) []byte {
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	m[field] = v
	b, _ := json.Marshal(m)
	return b
}

func FuzzUnsignedPushReachesNoPlatformCallNorStorage(f *testing.F) {
	rig := newUnsignedRig(f)
	good := signedPush(f, rig.push)
	var env map[string]string
	_ = json.Unmarshal(good, &env)
	for _, b := range [][]byte{
		withField(f, good, "MsgSignature", strings.Repeat("0", 40)),
		withField(f, good, "MsgSignature", push.Signature("not-the-token", env["TimeStamp"], env["Nonce"], env["Encrypt"])),
		withField(f, good, "TimeStamp", "1"),
		withField(f, good, "Nonce", "1"),
		withField(f, good, "Encrypt", env["Encrypt"][:len(env["Encrypt"])-4]+"AAA="),
		withField(f, good, "Encrypt", strings.Repeat("QUFB", 15000)),
		withField(f, good, "Nonce", map[string]any{"a": []int{1, 2, 3}}),
		[]byte(`{"Nonce":"1","TimeStamp":"1","Encrypt":"","MsgSignature":""}`),
		[]byte(`{"Nonce":1e999,"TimeStamp":-1,"Encrypt":null,"MsgSignature":[]}`),
		[]byte(`[` + strings.Repeat(`[`, 10000)),
		[]byte(`not json`), {}, bytes.Repeat([]byte{0xff}, 4096),
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if _, err := rig.push.Open(body); err == nil {
			t.Skip("a signed push (the fuzzer kept the signature): not unsigned input")
		}
		ops, calls := rig.store.ops.Load(), rig.calls.Load()
		status := rig.post(body, int64(len(body)))
		if status < 400 || status >= 500 {
			t.Fatalf("an unsigned push was answered %d", status)
		}
		if d := rig.store.ops.Load() - ops; d != 0 {
			t.Fatalf("an unsigned push used the storage %d times", d)
		}
		if d := rig.calls.Load() - calls; d != 0 {
			t.Fatalf("an unsigned push made %d platform calls", d)
		}
	})
}

func TestUnsignedPushesAllocateMemoryBoundedByTheBodyLimit(t *testing.T) {
	rig := newUnsignedRig(t)
	good := signedPush(t, rig.push)
	big := withField(t, good, "Encrypt", strings.Repeat("QUFB", (maxPushBody-200)/4)) // unsigned, just under 64 KiB
	if len(big) > maxPushBody {
		t.Fatalf("the body is %d bytes", len(big))
	}
	over := append(append([]byte(nil), big...), bytes.Repeat([]byte(" "), 8<<10)...)
	cases := []struct {
		name      string
		body      []byte
		announced int64
		status    int
	}{
		{"a 64 KiB unsigned push", big, int64(len(big)), http.StatusForbidden},
		{"a 64 KiB unsigned push announcing 1 GiB", big, 1 << 30, http.StatusForbidden},
		{"a 72 KiB body announcing 1 GiB", over, 1 << 30, http.StatusRequestEntityTooLarge},
	}
	const rounds = 50
	for _, tc := range cases {
		if got := rig.post(tc.body, tc.announced); got != tc.status {
			t.Fatalf("%s: status %d, want %d", tc.name, got, tc.status)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for range rounds {
			rig.post(tc.body, tc.announced)
		}
		runtime.ReadMemStats(&after)
		per := (after.TotalAlloc - before.TotalAlloc) / rounds
		t.Logf("%s: %d KiB allocated per request", tc.name, per>>10)
		if per > 8*maxPushBody {
			t.Fatalf("%s: %d bytes allocated per request (body limit %d)", tc.name, per, maxPushBody)
		}
	}
	if rig.store.ops.Load() != 0 || rig.calls.Load() != 0 {
		t.Fatalf("unsigned pushes used the storage %d times and made %d platform calls", rig.store.ops.Load(), rig.calls.Load())
	}
}
