package tokensource_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// recordFile is the storage file of appid's record.
func (h *harness) recordFile(appid string) string {
	return filepath.Join(h.dir, "tptoken", testComponent, "authorizers", appid+".json")
}

// flushOutcomes are the log lines of a decision on an unsaved record.
var flushOutcomes = []string{"unsaved in-memory record stored", "dropping an in-memory record an operator deleted",
	"dropping an unsaved in-memory record: storage holds a newer one"}

func flushes(h *harness, appid string) int {
	n := 0
	for _, e := range h.logs.All() {
		for _, m := range flushOutcomes {
			if e.Message == m && e.ContextMap()["appid"] == appid {
				n++
			}
		}
	}
	return n
}

// syncAndFlush makes e notice what storage holds now for appid: a request
// after SyncInterval reloads the record in the background, which writes back
// (or drops) what memory holds and storage lacks.
func syncAndFlush(t *testing.T, h *harness, e *tokensource.Engine, appid string) {
	t.Helper()
	before := flushes(h, appid)
	h.clock.Advance(31 * time.Second)
	if _, err := e.Token(context.Background(), appid); err != nil {
		t.Fatalf("serving %s from memory: %v", appid, err)
	}
	eventually(t, "the background reload of "+appid, func() bool { return flushes(h, appid) > before })
}

// The storage is wiped while an instance serves: the records it holds in
// memory are written back, with no platform call, and another instance
// started afterwards serves them from storage.
func TestStorageLostUnderARunningEngineIsWrittenBackFromMemory(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		e := h.engine()
		h.authorize(e, "tt01wb")
		tok, err := e.Token(context.Background(), "tt01wb")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(filepath.Join(h.dir, "tptoken")); err != nil {
			t.Fatal(err)
		}
		syncAndFlush(t, h, e, "tt01wb")
		if _, err := os.Stat(h.recordFile("tt01wb")); err != nil {
			t.Fatalf("the record was not written back: %v", err)
		}
		info, err := h.engine().Info(context.Background(), "tt01wb")
		if err != nil || info.State != tokensource.StateActive || info.Generation != 1 || info.Unsaved {
			t.Fatalf("another instance reads %+v, %v: want the active generation 1", info, err)
		}
		if again, err := e.Token(context.Background(), "tt01wb"); err != nil || again.Value != tok.Value {
			t.Fatalf("the serving instance changed token (%v)", err)
		}
		h.expire()
		if _, err := h.engine().Token(context.Background(), "tt01wb"); err != nil {
			t.Fatalf("another instance cannot refresh with the written-back record: %v", err)
		}
		if s := h.emu.Stats().App("tt01wb"); s.Exchanges != 1 || s.Retrieves != 0 || s.Refresh40021 != 0 || s.Refreshes != 1 {
			t.Fatalf("platform calls %+v: want the first exchange and one clean refresh only", s)
		}
		if !logged(h, "storage lacks this authorizer's newest record") {
			t.Fatal("the write-back was not logged")
		}
		h.assertNoSecretsLogged()
	})
}

// An old backup is restored under a running instance: its refresh token is
// spent, and the instance writes back the newer record of the same chain it
// holds instead of letting the next refresh fail with 40021.
func TestOldBackupRestoredUnderARunningEngineIsOverwrittenByMemory(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	e := h.engine()
	h.authorize(e, "tt01old")
	backup, err := os.ReadFile(h.recordFile("tt01old"))
	if err != nil {
		t.Fatal(err)
	}
	h.expire()
	if _, err := e.Token(context.Background(), "tt01old"); err != nil { // generation 2: the backup's token is spent
		t.Fatal(err)
	}
	if err := os.WriteFile(h.recordFile("tt01old"), backup, 0o600); err != nil {
		t.Fatal(err)
	}
	syncAndFlush(t, h, e, "tt01old")
	h.expire()
	if _, err := h.engine().Token(context.Background(), "tt01old"); err != nil {
		t.Fatal(err)
	}
	if s := h.emu.Stats().App("tt01old"); s.Refresh40021 != 0 || s.Retrieves != 0 || s.Refreshes != 2 {
		t.Fatalf("platform calls %+v: the restored spent refresh token was used (want 2 clean refreshes)", s)
	}
}

// An operator deletes an authorizer through one instance while another holds
// it in memory: the other drops it instead of writing it back.
func TestForgottenAuthorizerIsNotWrittenBackByAnotherInstance(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e1, e2 := h.engine(), h.engine()
	h.authorize(e1, "tt01gone")
	h.clock.Advance(6 * time.Second) // e2 answered "missing" from memory meanwhile
	if _, err := e2.Token(context.Background(), "tt01gone"); err != nil {
		t.Fatal(err)
	}
	if err := e1.Forget(context.Background(), "tt01gone"); err != nil {
		t.Fatal(err)
	}
	syncAndFlush(t, h, e2, "tt01gone")
	if _, err := os.Stat(h.recordFile("tt01gone")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the deleted record came back: %v", err)
	}
	h.clock.Advance(10 * time.Second)
	if _, err := e2.Token(context.Background(), "tt01gone"); tokensource.KindOf(err) != tokensource.KindUnknownAuthorizer {
		t.Fatalf("the other instance still serves the deleted authorizer: %v", err)
	}
	// A new authorization of it is a new chain: storage lost again, it is written back.
	h.authorize(e1, "tt01gone")
	h.clock.Advance(6 * time.Second) // e2 answered "missing" from memory meanwhile
	if _, err := e2.Token(context.Background(), "tt01gone"); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(h.recordFile("tt01gone")); err != nil {
		t.Fatal(err)
	}
	syncAndFlush(t, h, e2, "tt01gone")
	if _, err := os.Stat(h.recordFile("tt01gone")); err != nil {
		t.Fatalf("the new authorization was not written back: %v", err)
	}
}

// An unsaved record (its write failed) meets a record of another chain in
// storage (an exchange elsewhere, for instance a rebuild after storage was
// lost, at a lower generation): the other chain is the live one, and the
// record in memory is dropped, not written over it.
func TestUnsavedRecordNeverOverwritesAnotherChain(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	flaky := &flakyStore{FileStorage: h.store()}
	e1 := h.engine(func(c *tokensource.Config) { c.Store = flaky })
	h.authorize(e1, "tt01chain")
	for range 3 { // generation 4 in memory, unsaved
		h.expire()
		flaky.failWrites.Store(true)
		if _, err := e1.Token(context.Background(), "tt01chain"); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(h.recordFile("tt01chain")); err != nil {
		t.Fatal(err)
	}
	e2 := h.engine()
	h.authorize(e2, "tt01chain") // a new chain, generation 1: the platform killed e1's
	flaky.failWrites.Store(false)
	for _, j := range e1.BackgroundPass(context.Background(), 1, false) {
		j.Run(context.Background())
	}
	info, err := tokensourceInfo(h, "tt01chain")
	if err != nil || info.Generation != 1 {
		t.Fatalf("stored %+v, %v: the dead chain was written over the live one", info, err)
	}
	tok, err := e1.Token(context.Background(), "tt01chain")
	if err != nil {
		t.Fatal(err)
	}
	if owner, code := h.downstream(tok); code != 0 || owner != "tt01chain" {
		t.Fatalf("e1 serves a dead token (code %d)", code)
	}
}

// tokensourceInfo reads appid's record through a fresh instance.
func tokensourceInfo(h *harness, appid string) (tokensource.Info, error) {
	e, err := tokensource.New(tokensource.Config{ComponentAppID: testComponent, ComponentSecret: testSecret, Family: h.family,
		Endpoint: h.srv.URL, Store: &certmagic.FileStorage{Path: h.dir}, Now: h.clock.Now})
	if err != nil {
		return tokensource.Info{}, err
	}
	defer e.Close()
	return e.Info(context.Background(), appid)
}

// The ticket is lost with the storage: the instance holding it writes it back
// when it next needs it, so an instance started before the next push (up to 10
// minutes away) can get a component token.
func TestTicketLostFromStorageIsWrittenBack(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	e := h.engine()
	mustComponent(t, e)
	wipe(t, filepath.Join(h.dir, "tptoken"))
	h.clock.Advance(2 * time.Hour) // the component token expires: the next one needs the ticket
	mustComponent(t, e)
	if _, err := os.Stat(filepath.Join(h.dir, "tptoken", testComponent, "ticket.json")); err != nil {
		t.Fatalf("the ticket was not written back: %v", err)
	}
	h.assertNoSecretsLogged()
}

// Storage wiped under a running instance: its background loop writes back
// the ticket and the component token it holds, so an instance that never had
// them gets a component token at once, without fetching one (which on api v2
// would invalidate the running instance's).
func TestTicketAndComponentTokenLostFromStorageAreWrittenBackInTheBackground(t *testing.T) {
	h := newHarness(t, tokensource.V2)
	e := h.engine(background)
	mustComponent(t, e)
	run(t, e)
	wipe(t, filepath.Join(h.dir, "tptoken"))
	dir := filepath.Join(h.dir, "tptoken", testComponent)
	eventually(t, "the ticket and the component token written back", func() bool {
		_, err1 := os.Stat(filepath.Join(dir, "ticket.json"))
		_, err2 := os.Stat(filepath.Join(dir, "component_token_v2.json"))
		return err1 == nil && err2 == nil
	})
	fetches := h.emu.Stats().Total.ComponentTokenFetches
	other, err := tokensource.New(tokensource.Config{ComponentAppID: testComponent, ComponentSecret: testSecret, Family: h.family,
		Endpoint: h.srv.URL, Store: h.store(), Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.ComponentToken(context.Background()); err != nil {
		t.Fatalf("an instance that never got a ticket: %v", err)
	}
	if h.emu.Stats().Total.ComponentTokenFetches != fetches {
		t.Fatal("the other instance fetched a component token instead of using the one written back")
	}
	h.assertNoSecretsLogged()
}
