package tokensource_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

func TestEncryptedRecordsAreUnreadableWithoutTheKey(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	key := []byte("0123456789abcdef0123456789abcdef")
	e := h.engine(func(c *tokensource.Config) { c.EncryptionKey = key })
	h.authorize(e, "tt01app")
	tok, _ := e.Token(context.Background(), "tt01app")

	var files []string
	_ = filepath.Walk(h.dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && strings.HasSuffix(p, ".json") {
			files = append(files, p)
		}
		return nil
	})
	if len(files) < 3 {
		t.Fatalf("expected ticket, component token and authorizer records, found %v", files)
	}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, s := range append(h.emu.IssuedSecrets(), tok.Value.Reveal()) {
			if strings.Contains(string(b), s) {
				t.Fatalf("%s holds a secret in clear", f)
			}
		}
		if strings.Contains(string(b), "refresh_token") {
			t.Fatalf("%s shows record fields in clear", f)
		}
	}
	h.expire()
	_, err := h.engine().Token(context.Background(), "tt01app")
	if err == nil || !strings.Contains(err.Error(), "encryption_key") {
		t.Fatalf("without the key: err = %v, want one naming encryption_key", err)
	}
	other := []byte("ffffffffffffffffffffffffffffffff")
	if _, err := h.engine(func(c *tokensource.Config) { c.EncryptionKey = other }).Token(context.Background(), "tt01app"); err == nil {
		t.Fatal("a wrong key read the record")
	}
	if s := h.emu.Stats().App("tt01app"); s.Refreshes != 0 || s.Refresh40021 != 0 {
		t.Fatalf("instances without the key called the platform: %+v", s)
	}
	tok2, err := h.engine(func(c *tokensource.Config) { c.EncryptionKey = key }).Token(context.Background(), "tt01app")
	if err != nil {
		t.Fatal(err)
	}
	if _, code := h.downstream(tok2); code != 0 {
		t.Fatalf("with the key: code %d", code)
	}
}

func TestEncryptionKeyRotationReadsOldRecordsAndResealsThem(t *testing.T) {
	h := newHarness(t, tokensource.V1)
	ctx := context.Background()
	k1 := []byte("0123456789abcdef0123456789abcdef")
	k2 := []byte("ffffffffffffffff0000000000000000")
	withKeys := func(cur []byte, prev ...[]byte) engineOpt {
		return func(c *tokensource.Config) { c.EncryptionKey, c.PreviousEncryptionKeys = cur, prev }
	}
	plain := h.engine()
	h.authorize(plain, "tt00plain")
	old := h.engine(withKeys(k1))
	h.authorize(old, "tt01app")
	h.authorize(old, "tt02app")
	if _, err := old.ComponentToken(ctx); err != nil {
		t.Fatal(err)
	}
	// A push handled: its replay memory is stored too.
	if err := h.deliver(old, push.Message{Kind: push.Ticket, Ticket: "t2"}); err != nil {
		t.Fatal(err)
	}

	// Step 1 of a rotation: the new key is current, the old one previous.
	rotated := h.engine(withKeys(k2, k1))
	for _, id := range []string{"tt00plain", "tt01app", "tt02app"} {
		if _, err := rotated.Token(ctx, id); err != nil {
			t.Fatalf("%s with the old key as previous: %v", id, err)
		}
	}
	// A record written after the rotation is sealed with the new key.
	h.expire()
	if _, err := rotated.Token(ctx, "tt01app"); err != nil {
		t.Fatal(err)
	}
	onlyNew := func() *tokensource.Engine { return h.engine(withKeys(k2)) }
	if _, err := onlyNew().Info(ctx, "tt01app"); err != nil {
		t.Fatalf("a record written after the rotation is not sealed with the new key: %v", err)
	}
	if _, err := onlyNew().Info(ctx, "tt02app"); err == nil || !strings.Contains(err.Error(), "key id") {
		t.Fatalf("a record not written since is readable without the old key, or the error does not name its key: %v", err)
	}

	rep, err := rotated.Reseal(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Resealed < 3 || rep.Failed != 0 || rep.KeyID != tokensource.KeyID(k2) {
		t.Fatalf("reseal = %+v", rep)
	}
	fresh := onlyNew()
	for _, id := range []string{"tt00plain", "tt01app", "tt02app"} {
		if _, err := fresh.Info(ctx, id); err != nil {
			t.Fatalf("%s after reseal, with the new key only: %v", id, err)
		}
	}
	if ci := fresh.ComponentInfo(ctx); ci.TicketReceivedAt.IsZero() || ci.TokenExpiry.IsZero() {
		t.Fatalf("ticket or component token unreadable with the new key only: %+v", ci)
	}
	for name, b := range h.storedFiles() {
		if strings.HasSuffix(name, ".json") && strings.HasPrefix(name, "tptoken") && !strings.Contains(b, `"kid":"`+tokensource.KeyID(k2)+`"`) {
			t.Errorf("%s is not sealed with the new key after reseal", name)
		}
	}
	if rep, err := rotated.Reseal(ctx); err != nil || rep.Resealed != 0 || rep.Current < 3 {
		t.Fatalf("second reseal = %+v, %v", rep, err)
	}
	if _, err := plain.Reseal(ctx); kindOf(err) != tokensource.KindBadInput {
		t.Fatalf("reseal without a key: %v", err)
	}
	if _, err := tokensource.New(tokensource.Config{ComponentAppID: testComponent, ComponentSecret: testSecret, Endpoint: h.srv.URL, Store: h.store(),
		PreviousEncryptionKeys: [][]byte{k1}}); err == nil {
		t.Fatal("previous keys without a current key were accepted")
	}
	h.assertNoSecretsLogged()
}
