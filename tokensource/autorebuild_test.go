package tokensource_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// loudRuns counts the ERROR lines announcing a rebuild_on_empty run.
func loudRuns(h *harness) int {
	n := 0
	for _, e := range h.logs.All() {
		if e.Level >= 2 && (strings.HasPrefix(e.Message, "NO AUTHORIZER RECORDS IN STORAGE") || strings.HasPrefix(e.Message, "NO REBUILD MARKER IN STORAGE")) {
			n++
		}
	}
	return n
}

// wipe deletes dir at once (running instances write files meanwhile, so a
// RemoveAll could meet new ones): it is renamed away first.
func wipe(t *testing.T, dir string) {
	t.Helper()
	gone := dir + ".wiped"
	if err := os.Rename(dir, gone); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(gone); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) marker() map[string]any {
	b, err := os.ReadFile(filepath.Join(h.dir, "tptoken", testComponent, "rebuild.json"))
	if err != nil {
		return nil
	}
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return m
}

// Two instances with rebuild_on_empty start on an empty store: one of them
// rebuilds every listed authorizer, once, loudly; restarted instances do
// nothing; storage wiped while they run is rebuilt again, once.
func TestRebuildOnEmptyStoreRunsOncePerCluster(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	var ids []string
	for i := range 6 {
		id := fmt.Sprintf("tt%02dauto", i)
		ids = append(ids, id)
		if _, err := h.emu.Authorize(id, false); err != nil { // the AUTHORIZED pushes never arrived
			t.Fatal(err)
		}
	}
	auto := func(c *tokensource.Config) { background(c); c.RebuildOnEmpty = true }
	exchanged := func(n int64) func() bool {
		return func() bool {
			st := h.emu.Stats()
			for _, id := range ids {
				if st.App(id).Exchanges != n {
					return false
				}
			}
			m := h.marker()
			return m != nil && m["state"] == "done"
		}
	}
	e1, e2 := h.engine(auto), h.engine(auto)
	run(t, e1)
	run(t, e2)
	eventually(t, "every authorizer rebuilt and the marker done", exchanged(1))
	if n := loudRuns(h); n != 1 {
		t.Fatalf("%d rebuild_on_empty runs announced, want 1", n)
	}
	if m := h.marker(); m["trigger"] != "empty" {
		t.Fatalf("marker %v", m)
	}
	for _, id := range ids {
		tok, err := e2.Token(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if owner, code := h.downstream(tok); code != 0 || owner != id {
			t.Fatalf("%s: code %d", id, code)
		}
	}

	// Restarted instances find the marker: nothing runs again.
	e3 := h.engine(auto)
	run(t, e3)
	before := h.emu.Stats().Total
	for _, j := range e3.BackgroundPass(context.Background(), 0, true) { // one sweep: the loop had time to look
		j.Run(context.Background())
	}
	eventually(t, "e3 found the done marker", func() bool {
		return h.logs.FilterMessageSnippet("rebuild_on_empty: a finished rebuild is on record").Len() >= 3 // e1, e2 (once each), e3
	})
	if after := h.emu.Stats().Total; after.Exchanges != before.Exchanges || after.Retrieves != before.Retrieves || loudRuns(h) != 1 {
		t.Fatalf("a restarted instance rebuilt again: %d exchanges, %d announced runs", after.Exchanges-before.Exchanges, loudRuns(h))
	}

	// Storage wiped under the running instances (which hold nothing in memory
	// but e2's tokens, written back): the marker is gone, and it runs once more.
	wipe(t, filepath.Join(h.dir, "tptoken"))
	eventually(t, "the second rebuild", func() bool {
		st := h.emu.Stats()
		for _, id := range ids {
			if st.App(id).Exchanges > 2 {
				return true
			}
		}
		m := h.marker()
		return m != nil && m["state"] == "done" && loudRuns(h) == 2
	})
	if n := loudRuns(h); n != 2 {
		t.Fatalf("%d announced runs after the wipe, want 2", n)
	}
	st := h.emu.Stats()
	for _, id := range ids {
		if c := st.App(id); c.Exchanges > 2 || c.Refresh40021 != 0 {
			t.Errorf("%s: %+v", id, c)
		}
	}
	h.assertNoSecretsLogged()
}
