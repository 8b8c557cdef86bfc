package tptoken

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// check-storage: the guarantees tptoken relies on from its storage, checked
// against the storage of the running config, through two handles as two
// instances would hold them: handle A is the config's own storage object,
// handle B a second provisioning of the same storage configuration. The route
// is admin_storagecheck.go's, the command command_storagecheck.go's, the lock
// holder process storagecheck_holder.go's; docs/reliability.md says what each
// guarantee is for and what the check cannot prove.

// Guarantees, in the order they are checked.
const (
	checkRoundTrip     = "round_trip"
	checkVisibility    = "visibility"
	checkList          = "list"
	checkLockExclusion = "lock_exclusion"
	checkLockTakeover  = "lock_takeover"
	checkCleanup       = "cleanup"
)

var storageGuarantees = []string{checkRoundTrip, checkVisibility, checkList, checkLockExclusion, checkLockTakeover, checkCleanup}

// Verdicts, from best to worst.
const (
	verdictPass    = "pass"
	verdictWarn    = "warn"
	verdictSkipped = "skipped"
	verdictFail    = "fail"
)

var verdictRank = map[string]int{verdictPass: 0, verdictWarn: 1, verdictSkipped: 2, verdictFail: 3}

const (
	// defaultCheckHold: how long handle A holds the lock that handle B must
	// not get: longer than the lease of the common storages (file_system
	// declares a lock stale 10 s after its last refresh; caddy-storage-redis
	// gives it a 5 s TTL), so the holder's renewal is tested too.
	defaultCheckHold = 12 * time.Second
	minCheckHold     = time.Second
	maxCheckHold     = 2 * time.Minute
	// checkStepTimeout bounds each storage call of the check.
	checkStepTimeout = 10 * time.Second
	// checkHandoff: a lock released by A must reach B within this long
	// (file_system and redis poll once a second).
	checkHandoff = 5 * time.Second
	// checkTakeoverBound: a lock whose holder vanished must be taken over
	// within this long, or the check fails.
	checkTakeoverBound = 2 * time.Minute
	// defaultLockTimeout is the engine's lock_timeout default (README).
	defaultLockTimeout = 15 * time.Second
	checkRounds        = 5
	checkValueSize     = 4 << 10
)

// cannotProve is what no check run against a live storage can show.
var cannotProve = []string{
	"durability across a restart or failover of the storage: a Redis without persistence loses every record when it restarts (set appendonly yes with appendfsync everysec, or RDB snapshots, and keep backups); a file_system folder needs a disk that survives the host",
	"lock safety across a failover of a replicated storage (Redis Sentinel or Cluster can grant one lock twice while a replica catches up)",
	"fencing: a holder paused longer than its lock's lease (a stopped VM, a long pause) may still act after another instance took the lock over",
	"network file systems: NFS O_EXCL and rename semantics under a partition",
	"behaviour under load, and clock skew between instances",
}

// storageTarget is what check-storage needs of a config: its storage object
// (handle A) and how to provision a second one (handle B).
type storageTarget struct {
	a           certmagic.Storage
	raw         json.RawMessage // the storage module's JSON, with its "module" key; nil: no second handle
	why         string          // why there is none
	lockTimeout time.Duration   // the smallest lock_timeout of the components
}

// newStorageTarget describes st, the storage a config's engines use: raw is
// tptoken's own `storage` option (copied before LoadModule zeroed it), nil
// when Caddy's storage is used.
func newStorageTarget(raw json.RawMessage, st certmagic.Storage, comps []*Component) *storageTarget {
	t := &storageTarget{a: st, lockTimeout: defaultLockTimeout}
	for i, c := range comps {
		if d := time.Duration(c.LockTimeout); d > 0 && (i == 0 || d < t.lockTimeout) {
			t.lockTimeout = d
		}
	}
	switch s := st.(type) {
	case nil:
		t.why = "no storage"
	case *certmagic.FileStorage:
		if raw == nil {
			t.raw, _ = json.Marshal(map[string]string{"module": "file_system", "root": s.Path})
		}
	case caddy.Module: // a module that is its own certmagic.Storage (caddy-storage-redis)
		if raw == nil {
			t.raw, t.why = moduleJSON(s)
		}
	default:
		if raw == nil {
			t.why = fmt.Sprintf("Caddy's storage (%T) cannot be provisioned a second time from here: set the storage inside the tptoken block (`storage <module> {...}`) so check-storage can open a second handle", st)
		}
	}
	if raw != nil {
		t.raw = slices.Clone(raw)
	}
	return t
}

// moduleJSON is the configuration of a provisioned storage module, with its
// "module" key, for provisioning it again.
func moduleJSON(m caddy.Module) (json.RawMessage, string) {
	id := string(m.CaddyModule().ID)
	name, ok := strings.CutPrefix(id, "caddy.storage.")
	b, err := json.Marshal(m)
	var fields map[string]json.RawMessage
	if !ok || err != nil || json.Unmarshal(b, &fields) != nil {
		return nil, fmt.Sprintf("the configuration of storage module %s cannot be read back: set the storage inside the tptoken block so check-storage can open a second handle", id)
	}
	fields["module"], _ = json.Marshal(name)
	b, _ = json.Marshal(fields)
	return b, ""
}

// openStorage provisions a storage module from its JSON in a context of its
// own: not derived from a config's, whose cancellation would run that config's
// cleanups. close unloads it.
func openStorage(raw json.RawMessage) (st certmagic.Storage, close func(), err error) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	v := struct {
		StorageRaw json.RawMessage `json:"storage" caddy:"namespace=caddy.storage inline_key=module"`
	}{slices.Clone(raw)}
	mod, err := ctx.LoadModule(&v, "StorageRaw")
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("loading the storage module: %v", err)
	}
	conv, ok := mod.(caddy.StorageConverter)
	if !ok {
		cancel()
		return nil, nil, fmt.Errorf("module %T is not a storage", mod)
	}
	if st, err = conv.CertMagicStorage(); err != nil {
		cancel()
		return nil, nil, fmt.Errorf("opening the storage: %v", err)
	}
	return st, cancel, nil
}

// checkLine is one line of the check's NDJSON answer.
type checkLine struct {
	Event string `json:"event"` // start, result, end

	// start
	Storage      string `json:"storage,omitempty"`       // handle A
	SecondHandle string `json:"second_handle,omitempty"` // handle B, or why there is none
	Scratch      string `json:"scratch,omitempty"`       // the prefix written under
	HoldMS       int64  `json:"hold_ms,omitempty"`

	// result
	Guarantee  string `json:"guarantee,omitempty"`
	TakeoverMS int64  `json:"takeover_ms,omitempty"`
	Detail     string `json:"detail,omitempty"`

	// result and end
	Verdict string `json:"verdict,omitempty"`
	TookMS  int64  `json:"took_ms,omitempty"`

	// end
	CannotProve []string `json:"cannot_prove,omitempty"`
}

// storageCheck is one run.
type storageCheck struct {
	t      *storageTarget
	b      certmagic.Storage // nil without a second handle
	bWhy   string            // why
	hold   time.Duration
	prefix string // scratch keys: tptoken/check-storage-<run>
	lock   string // scratch lock names: tptoken.check-storage-<run>.
	log    *zap.Logger

	written  map[string]bool   // keys stored (cleanup deletes them)
	held     []heldLock        // locks not released yet
	holder   *lockHolder       // the holder process, while it lives
	takeover time.Duration     // lock_takeover's measure (0: none)
	results  map[string]string // guarantee → verdict
}

type heldLock struct {
	s    certmagic.Storage
	name string
}

// runStorageCheck checks every guarantee, emitting one line per guarantee as
// it ends, and returns the end line. The scratch keys and locks are removed
// whatever happens (cancellation included), with a context of their own.
func runStorageCheck(ctx context.Context, t *storageTarget, hold time.Duration, log *zap.Logger, emit func(checkLine)) checkLine {
	run := make([]byte, 6)
	_, _ = rand.Read(run)
	c := &storageCheck{t: t, hold: hold, log: log, written: map[string]bool{}, results: map[string]string{},
		prefix: "tptoken/check-storage-" + hex.EncodeToString(run), lock: "tptoken.check-storage-" + hex.EncodeToString(run) + "."}
	start := time.Now()
	second := ""
	if t.raw == nil {
		c.bWhy = t.why
	} else if b, closeB, err := openStorage(t.raw); err != nil {
		c.bWhy = "cannot open a second handle: " + err.Error()
	} else {
		c.b = b
		defer closeB()
		second = "a second handle on the same storage configuration: " + describeStorage(b)
	}
	if c.b == nil {
		second = "none: " + c.bWhy
	}
	emit(checkLine{Event: "start", Storage: describeStorage(t.a), SecondHandle: second, Scratch: c.prefix + "/", HoldMS: hold.Milliseconds()})

	steps := []struct {
		name string
		fn   func(context.Context) (string, string)
	}{
		{checkRoundTrip, c.roundTrip}, {checkVisibility, c.visibility}, {checkList, c.list},
		{checkLockExclusion, c.lockExclusion}, {checkLockTakeover, c.lockTakeover},
	}
	for _, s := range steps {
		if ctx.Err() != nil {
			break
		}
		t0 := time.Now()
		verdict, detail := s.fn(ctx)
		if ctx.Err() != nil && verdict != verdictPass {
			break // interrupted: the verdict would be about the interruption
		}
		line := checkLine{Event: "result", Guarantee: s.name, Verdict: verdict, TookMS: time.Since(t0).Milliseconds(), Detail: detail}
		if s.name == checkLockTakeover && c.takeover > 0 {
			line.TakeoverMS = c.takeover.Milliseconds()
		}
		c.results[s.name] = verdict
		emit(line)
	}
	t0 := time.Now()
	verdict, detail := c.cleanup(ctx)
	c.results[checkCleanup] = verdict
	emit(checkLine{Event: "result", Guarantee: checkCleanup, Verdict: verdict, TookMS: time.Since(t0).Milliseconds(), Detail: detail})

	end := checkLine{Event: "end", Verdict: verdictPass, TookMS: time.Since(start).Milliseconds(), CannotProve: cannotProve}
	for _, g := range storageGuarantees {
		v, ok := c.results[g]
		if !ok {
			v = verdictSkipped // interrupted before it ran
		}
		if verdictRank[v] > verdictRank[end.Verdict] {
			end.Verdict = v
		}
	}
	fields := []zap.Field{zap.String("verdict", end.Verdict), zap.String("storage", describeStorage(t.a)),
		zap.Duration("took", time.Since(start)), zap.Any("guarantees", c.results)}
	if c.takeover > 0 {
		fields = append(fields, zap.Duration("takeover", c.takeover))
	}
	switch {
	case ctx.Err() != nil: // the metrics keep the last complete check
		end.Detail = "interrupted: the guarantees not reported were not checked; the scratch keys and locks were removed"
		log.Info("storage check interrupted; its scratch keys and locks were removed", fields...)
	case end.Verdict == verdictFail:
		recordStorageCheck(c.results, c.takeover)
		log.Warn("storage check failed: tptoken's coordination or records are not safe on this storage", fields...)
	default:
		recordStorageCheck(c.results, c.takeover)
		log.Info("storage check ended", fields...)
	}
	emit(end)
	return end
}

// describeStorage names a storage for people: its description when it has
// one (FileStorage:/path), else its type.
func describeStorage(s certmagic.Storage) string {
	if st, ok := s.(fmt.Stringer); ok {
		return st.String()
	}
	return fmt.Sprintf("%T", s)
}

// step runs one storage call with the step deadline.
func step(ctx context.Context, fn func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, checkStepTimeout)
	defer cancel()
	return fn(ctx)
}

func (c *storageCheck) store(ctx context.Context, s certmagic.Storage, key string, v []byte) error {
	c.written[key] = true
	return step(ctx, func(ctx context.Context) error { return s.Store(ctx, key, v) })
}

func (c *storageCheck) load(ctx context.Context, s certmagic.Storage, key string) ([]byte, error) {
	var b []byte
	err := step(ctx, func(ctx context.Context) (err error) { b, err = s.Load(ctx, key); return err })
	return b, err
}

func (c *storageCheck) list(ctx context.Context) (string, string) {
	base := c.prefix + "/list"
	files := []string{base + "/a.json", base + "/sub/b.json", base + "/sub/deeper/c.json"}
	for _, k := range files {
		if err := c.store(ctx, c.t.a, k, []byte(`{}`)); err != nil {
			return verdictFail, fmt.Sprintf("storing %s failed: %v", k, err)
		}
	}
	lists := func(s certmagic.Storage, who string) (flat, deep []string, verdict, detail string) {
		for _, recursive := range []bool{false, true} {
			var keys []string
			err := step(ctx, func(ctx context.Context) (err error) { keys, err = s.List(ctx, base, recursive); return err })
			if err != nil {
				return nil, nil, verdictFail, fmt.Sprintf("%s: List(%s, recursive %v) failed: %v: the sweep could not find the authorizer records", who, base, recursive, err)
			}
			sort.Strings(keys)
			if recursive {
				deep = keys
			} else {
				flat = keys
			}
		}
		const cost = ": the sweep would miss stored authorizers (their refresh tokens would expire unrenewed) or take other keys for records"
		for _, k := range slices.Concat(flat, deep) {
			if !strings.HasPrefix(k, base+"/") {
				return nil, nil, verdictFail, fmt.Sprintf("%s: List(%s) returned %q, not under the prefix%s", who, base, k, cost)
			}
		}
		switch {
		case !slices.Contains(flat, files[0]):
			return nil, nil, verdictFail, fmt.Sprintf("%s: the non-recursive List of %s lacks %s%s", who, base, files[0], cost)
		case slices.Contains(flat, files[1]) || slices.Contains(flat, files[2]):
			return nil, nil, verdictFail, fmt.Sprintf("%s: the non-recursive List of %s returned keys of a sub-folder (%v)%s", who, base, flat, cost)
		}
		for _, f := range files {
			if !slices.Contains(deep, f) {
				return nil, nil, verdictFail, fmt.Sprintf("%s: the recursive List of %s lacks %s%s", who, base, f, cost)
			}
		}
		return flat, deep, "", ""
	}
	flatA, deepA, v, d := lists(c.t.a, "handle A")
	if v != "" {
		return v, d
	}
	for _, recursive := range []bool{false, true} {
		var keys []string
		err := step(ctx, func(ctx context.Context) (err error) {
			keys, err = c.t.a.List(ctx, base+"/none", recursive)
			return err
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) || len(keys) > 0 {
			return verdictFail, fmt.Sprintf("List of a prefix holding nothing (%s/none) answered %v, %v: want nothing, or an error wrapping fs.ErrNotExist", base, keys, err)
		}
	}
	detail := fmt.Sprintf("3 keys stored at three depths: non-recursive List returned %d entries (the key, not the sub-folder's keys), recursive %d (all three)", len(flatA), len(deepA))
	if c.b == nil {
		return verdictPass, detail + "; not compared with a second handle (" + c.bWhy + ")"
	}
	flatB, deepB, v, d := lists(c.b, "handle B")
	if v != "" {
		return v, d
	}
	if !slices.Equal(flatA, flatB) || !slices.Equal(deepA, deepB) {
		return verdictFail, fmt.Sprintf("handle B lists other keys than handle A (%v / %v, A: %v / %v): instances would not see the same authorizers", flatB, deepB, flatA, deepA)
	}
	return verdictPass, detail + "; handle B lists the same"
}

func (c *storageCheck) roundTrip(ctx context.Context) (string, string) {
	key := c.prefix + "/round-trip.json"
	var stores, loads, deletes []time.Duration
	timed := func(into *[]time.Duration, fn func() error) error {
		t0 := time.Now()
		err := fn()
		*into = append(*into, time.Since(t0))
		return err
	}
	for range checkRounds {
		for _, overwrite := range []bool{false, true} {
			v := randomValue()
			if err := timed(&stores, func() error { return c.store(ctx, c.t.a, key, v) }); err != nil {
				what := "storing"
				if overwrite {
					what = "overwriting"
				}
				return verdictFail, fmt.Sprintf("%s a 4 KiB value failed: %v: tptoken could not save rotated tokens", what, err)
			}
			var got []byte
			err := timed(&loads, func() (err error) { got, err = c.load(ctx, c.t.a, key); return err })
			if err != nil {
				return verdictFail, fmt.Sprintf("loading a value just stored failed: %v: tptoken could not read its records", err)
			}
			if !bytes.Equal(got, v) {
				return verdictFail, fmt.Sprintf("a value read back differs from the one just stored (%d bytes, want %d): records would be corrupted", len(got), len(v))
			}
		}
		if err := timed(&deletes, func() error { return step(ctx, func(ctx context.Context) error { return c.t.a.Delete(ctx, key) }) }); err != nil {
			return verdictFail, fmt.Sprintf("deleting a key failed: %v: forgetting an authorizer would fail", err)
		}
		if _, err := c.load(ctx, c.t.a, key); !errors.Is(err, fs.ErrNotExist) {
			return verdictFail, fmt.Sprintf("loading a deleted key answered %v, not an error wrapping fs.ErrNotExist: tptoken would take a missing record for a storage failure", errText(err))
		}
	}
	return verdictPass, fmt.Sprintf("%d rounds of 4 KiB values through handle A: store median %s (max %s), load %s (%s), delete %s (%s)",
		checkRounds, short(median(stores)), short(slices.Max(stores)), short(median(loads)), short(slices.Max(loads)),
		short(median(deletes)), short(slices.Max(deletes)))
}

func (c *storageCheck) visibility(ctx context.Context) (string, string) {
	if c.b == nil {
		return verdictSkipped, c.bWhy
	}
	const cost = ": another instance would act on a stale record, and could refresh a token already rotated, which burns the authorizer's refresh token"
	key := c.prefix + "/visibility.json"
	v1, v2 := randomValue(), randomValue()
	if err := c.store(ctx, c.t.a, key, v1); err != nil {
		return verdictFail, fmt.Sprintf("handle A could not store: %v", err)
	}
	if got, err := c.load(ctx, c.b, key); err != nil || !bytes.Equal(got, v1) {
		return verdictFail, fmt.Sprintf("right after handle A stored a value, handle B read %s%s", readText(got, err), cost)
	}
	if err := c.store(ctx, c.b, key, v2); err != nil {
		return verdictFail, fmt.Sprintf("handle B could not overwrite it: %v", err)
	}
	if got, err := c.load(ctx, c.t.a, key); err != nil || !bytes.Equal(got, v2) {
		return verdictFail, fmt.Sprintf("right after handle B overwrote it, handle A read %s (the old value, or another)%s", readText(got, err), cost)
	}
	if err := step(ctx, func(ctx context.Context) error { return c.t.a.Delete(ctx, key) }); err != nil {
		return verdictFail, fmt.Sprintf("handle A could not delete it: %v", err)
	}
	if got, err := c.load(ctx, c.b, key); !errors.Is(err, fs.ErrNotExist) {
		return verdictFail, fmt.Sprintf("right after handle A deleted it, handle B read %s, want not-exist%s", readText(got, err), cost)
	}
	return verdictPass, "a store, an overwrite and a delete through one handle were seen at once through the other"
}

// lockExclusion: while A holds a lock, B must not get it, for longer than
// the storage's lease; once A releases it, B gets it.
func (c *storageCheck) lockExclusion(ctx context.Context) (string, string) {
	if c.b == nil {
		return verdictSkipped, c.bWhy
	}
	name := c.lock + "exclusion"
	if err := step(ctx, func(ctx context.Context) error { return c.t.a.Lock(ctx, name) }); err != nil {
		return verdictFail, fmt.Sprintf("handle A could not take a free lock: %v: tptoken could not refresh anything", err)
	}
	lockedAt := time.Now()
	c.held = append(c.held, heldLock{c.t.a, name})
	type result struct {
		at  time.Time
		err error
	}
	got := make(chan result, 1)
	bctx, cancel := context.WithTimeout(ctx, c.hold+checkHandoff)
	go func() {
		err := c.b.Lock(bctx, name)
		got <- result{time.Now(), err}
	}()
	// takenByB records B's lock for cleanup once B has it. B's wait always
	// ends here: a lock it got after the check stopped waiting is held too.
	answered := false
	takenByB := func(r result) bool {
		answered = true
		if r.err == nil {
			c.held = append(c.held, heldLock{c.b, name})
		}
		return r.err == nil
	}
	defer func() {
		cancel()
		if !answered {
			takenByB(<-got)
		}
	}()
	timer := time.NewTimer(c.hold)
	defer timer.Stop()
	select {
	case r := <-got:
		if takenByB(r) {
			return verdictFail, fmt.Sprintf("handle B took the lock %s after handle A took it, while A still held it: two instances could refresh one authorizer at once and burn its refresh token",
				short(r.at.Sub(lockedAt)))
		}
		if ctx.Err() != nil {
			return verdictFail, "interrupted"
		}
		return verdictFail, fmt.Sprintf("handle B's wait for the lock failed while A held it: %v: instances could not wait for each other's locks", r.err)
	case <-ctx.Done():
		return verdictFail, "interrupted"
	case <-timer.C:
	}
	releasedAt := time.Now()
	c.release(ctx, c.t.a, name)
	select {
	case r := <-got:
		if !takenByB(r) {
			return verdictFail, fmt.Sprintf("handle B did not get the lock within %s of handle A releasing it (%v): every renewal would wait for lock_timeout and fail", checkHandoff, r.err)
		}
		c.release(ctx, c.b, name)
		return verdictPass, fmt.Sprintf("handle B waited %s while handle A held the lock (A's lease was kept alive), and took it %s after A released it",
			c.hold, short(r.at.Sub(releasedAt)))
	case <-ctx.Done():
		return verdictFail, "interrupted"
	}
}

// release unlocks name through s and forgets it.
func (c *storageCheck) release(ctx context.Context, s certmagic.Storage, name string) {
	for i, h := range c.held {
		if h.s == s && h.name == name {
			c.held = slices.Delete(c.held, i, i+1)
			break
		}
	}
	if err := step(context.WithoutCancel(ctx), func(ctx context.Context) error { return s.Unlock(ctx, name) }); err != nil {
		c.log.Warn("storage check: releasing a scratch lock failed", zap.String("lock", name), zap.Error(err))
	}
}

// lockTakeover: a lock whose holder process was killed must be taken over by
// handle B within a bounded time.
func (c *storageCheck) lockTakeover(ctx context.Context) (string, string) {
	switch {
	case c.b == nil:
		return verdictSkipped, c.bWhy
	case c.results[checkLockExclusion] != verdictPass && c.results[checkLockExclusion] != verdictWarn:
		return verdictSkipped, "the lock does not exclude another handle (lock_exclusion): a take-over means nothing"
	}
	name := c.lock + "takeover"
	h, err := startLockHolder(ctx, c.t.raw, name)
	if err != nil {
		return verdictSkipped, fmt.Sprintf("could not start a process holding a lock (%v): the take-over of a crashed instance's lock was not measured", err)
	}
	c.holder = h
	// The holder's lock excludes B too (another process, not only another handle).
	ectx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	err = c.b.Lock(ectx, name)
	cancel()
	if err == nil {
		c.held = append(c.held, heldLock{c.b, name})
		return verdictFail, "handle B took a lock another process held: instances on different hosts could refresh one authorizer at once and burn its refresh token"
	}
	if ctx.Err() != nil {
		return verdictFail, "interrupted"
	}
	killedAt, err := h.kill()
	if err != nil {
		return verdictSkipped, fmt.Sprintf("could not kill the lock holder process: %v", err)
	}
	c.holder = nil
	tctx, cancel := context.WithTimeout(ctx, checkTakeoverBound)
	defer cancel()
	if err := c.b.Lock(tctx, name); err != nil {
		if ctx.Err() != nil {
			return verdictFail, "interrupted"
		}
		return verdictFail, fmt.Sprintf("the lock of a killed holder process was not taken over within %s (%v): a crashed instance would block its authorizers' renewals until someone removes its lock", checkTakeoverBound, err)
	}
	c.takeover = time.Since(killedAt)
	c.held = append(c.held, heldLock{c.b, name})
	c.release(ctx, c.b, name)
	took := short(c.takeover)
	if c.takeover > c.t.lockTimeout {
		return verdictWarn, fmt.Sprintf("taken over %s after its holder process was killed (SIGKILL): longer than lock_timeout (%s), so for that long after an instance crashes, requests needing a renewal it was doing fail with 503; raise lock_timeout above it, or use a storage whose locks expire sooner",
			took, c.t.lockTimeout)
	}
	return verdictPass, fmt.Sprintf("taken over %s after its holder process was killed (SIGKILL), within lock_timeout (%s): a crashed instance holds up its authorizers' renewals about that long",
		took, c.t.lockTimeout)
}

// cleanup removes what the check wrote and the locks it holds, with a context
// of its own: it runs after an interruption or a failure too.
func (c *storageCheck) cleanup(parent context.Context) (string, string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), checkStepTimeout)
	defer cancel()
	if c.holder != nil {
		_, _ = c.holder.kill()
		c.holder = nil
	}
	for len(c.held) > 0 {
		h := c.held[len(c.held)-1]
		c.release(ctx, h.s, h.name)
	}
	var problems []string
	for k := range c.written {
		if err := c.t.a.Delete(ctx, k); err != nil && !errors.Is(err, fs.ErrNotExist) {
			problems = append(problems, fmt.Sprintf("deleting %s: %v", k, err))
		}
	}
	if err := c.t.a.Delete(ctx, c.prefix); err != nil && !errors.Is(err, fs.ErrNotExist) {
		problems = append(problems, fmt.Sprintf("deleting %s: %v", c.prefix, err))
	}
	left, err := c.t.a.List(ctx, c.prefix, true)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		problems = append(problems, fmt.Sprintf("listing %s: %v", c.prefix, err))
	}
	if len(left) > 0 {
		sort.Strings(left)
		problems = append(problems, fmt.Sprintf("left behind: %s", strings.Join(left, ", ")))
	}
	if len(problems) > 0 {
		return verdictWarn, strings.Join(problems, "; ") + " (delete them by hand; tptoken ignores them)"
	}
	return verdictPass, fmt.Sprintf("%d scratch keys under %s/ deleted, nothing left; scratch locks released", len(c.written), c.prefix)
}

// recordStorageCheck exports a check's verdicts (metrics.go): each
// guarantee's series holds 1 for its verdict and 0 for the others.
func recordStorageCheck(results map[string]string, takeover time.Duration) {
	m := defaultMetrics()
	for _, g := range storageGuarantees {
		got := results[g]
		for v := range verdictRank {
			x := 0.0
			if v == got {
				x = 1
			}
			m.storageCheck.WithLabelValues(g, v).Set(x)
		}
	}
	m.storageCheckAt.WithLabelValues().SetToCurrentTime()
	m.storageTakeover.WithLabelValues().Set(takeover.Seconds())
}

// short rounds d for reading: 9.1s, 7.3ms, 485µs.
func short(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

func randomValue() []byte {
	b := make([]byte, checkValueSize)
	_, _ = rand.Read(b)
	return b
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func readText(b []byte, err error) string {
	if err != nil {
		return "an error (" + err.Error() + ")"
	}
	return fmt.Sprintf("other bytes (%d bytes)", len(b))
}

func errText(err error) string {
	if err == nil {
		return "a value"
	}
	return err.Error()
}
