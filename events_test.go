package tptoken

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

// End-to-end tests of tptoken_events through a real Caddy: pushes are sealed
// here with push.Crypto, as the platform does, then delivered (or
// tampered with first).

// sealRaw encrypts an exact plaintext (no padding added) with the TP's key and
// signs it correctly: for pushes whose inside is broken.
func sealRaw(t *testing.T, plaintext []byte) []byte {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(e2eAESKey + "=")
	if err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	ct := make([]byte, len(plaintext))
	cipher.NewCBCEncrypter(block, key[:16]).CryptBlocks(ct, plaintext)
	enc := base64.StdEncoding.EncodeToString(ct)
	ts, nonce := strconv.FormatInt(time.Now().Unix(), 10), "48213"
	b, _ := json.Marshal(map[string]string{"Nonce": nonce, "TimeStamp": ts, "Encrypt": enc,
		"MsgSignature": push.Signature(e2eMsgToken, ts, nonce, enc)})
	return b
}

// badPaddingPush is a correctly signed push whose padding is inconsistent: the
// last byte says 5 bytes of padding, the 4 before it disagree.
func badPaddingPush(t *testing.T, p any) []byte {
	t.Helper()
	msg, _ := json.Marshal(p)
	pt := make([]byte, 32, 512) // random prefix
	pt = binary.BigEndian.AppendUint32(pt, uint32(len(msg)))
	pt = append(pt, msg...)
	pt = append(pt, e2eComponent...)
	for len(pt)%32 != 31 {
		pt = append(pt, 'x')
	}
	pt = append(pt, 5)
	return sealRaw(t, pt)
}

func TestMalformedPushesAreRejectedAndChangeNothing(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{})
	x.authorize("tt01app") // a stored authorizer record and ticket to compare
	code, err := x.emu.Authorize("tt02app", false)
	if err != nil {
		t.Fatal(err)
	}
	valid := seal(t, e2eComponent, authorizedPayload("tt02app", code))

	var env map[string]string
	if err := json.Unmarshal(valid, &env); err != nil {
		t.Fatal(err)
	}
	env["MsgSignature"] = env["MsgSignature"][:39] + "0"
	if env["MsgSignature"] == push.Signature(e2eMsgToken, env["TimeStamp"], env["Nonce"], env["Encrypt"]) {
		env["MsgSignature"] = env["MsgSignature"][:39] + "1"
	}
	badSignature, _ := json.Marshal(env)

	huge := authorizedPayload("tt02app", code)
	huge.AppName = strings.Repeat("名", 30<<10) // 90 KiB of UTF-8: the push is well formed but too large

	cases := []struct {
		name   string
		body   []byte
		status int
	}{
		{"bad signature", badSignature, http.StatusForbidden},
		{"signed with another message token", func() []byte {
			var e map[string]string
			_ = json.Unmarshal(valid, &e)
			e["MsgSignature"] = push.Signature("not-the-message-token", e["TimeStamp"], e["Nonce"], e["Encrypt"])
			b, _ := json.Marshal(e)
			return b
		}(), http.StatusForbidden},
		{"bad padding", badPaddingPush(t, authorizedPayload("tt02app", code)), http.StatusBadRequest},
		{"wrong appid suffix", seal(t, "tt00someotherTP", authorizedPayload("tt02app", code)), http.StatusBadRequest},
		{"ticket for another TP", seal(t, "tt00someotherTP", pushPayload{Ticket: "a-forged-ticket-0123456789", MsgType: "Ticket", Event: "PUSH"}), http.StatusBadRequest},
		{"body not JSON", []byte(`Nonce=1&TimeStamp=2`), http.StatusBadRequest},
		{"decrypted message not JSON", func() []byte {
			pc, _ := push.NewCrypto(e2eMsgToken, e2eAESKey, e2eComponent)
			b, _ := pc.Seal([]byte(`AppId=tt02app&Event=AUTHORIZED`), "1700000000", "1")
			return b
		}(), http.StatusBadRequest},
		{"body over 64 KiB", seal(t, e2eComponent, huge), http.StatusRequestEntityTooLarge},
	}
	if n := len(cases[len(cases)-1].body); n <= 64<<10 {
		t.Fatalf("the large push is only %d bytes", n)
	}

	before, calls := x.stored(), totalCalls(x.emu.Stats())
	if len(before) < 2 {
		t.Fatalf("nothing stored to compare: %v", slicesOfKeys(before))
	}
	for _, tc := range cases {
		status, body := x.postPush(tc.body)
		if status != tc.status {
			t.Errorf("%s: status %d (%q), want %d", tc.name, status, body, tc.status)
		}
		if body == "success" {
			t.Errorf("%s: answered success", tc.name)
		}
		x.assertNoSecretIn(tc.name+": the answer", body)
	}
	if after := x.stored(); !maps.EqualFunc(before, after, bytes.Equal) {
		t.Fatalf("rejected pushes changed storage:\nbefore %v\nafter  %v", slicesOfKeys(before), slicesOfKeys(after))
	}
	if n := totalCalls(x.emu.Stats()); n != calls {
		t.Fatalf("rejected pushes made %d platform calls", n-calls)
	}
	if a := x.call("GET", x.apiPath(), appidHeader("tt02app"), ""); a.Status != 403 || a.TPToken.Error != "unknown_authorizer" {
		t.Fatalf("tt02app after rejected pushes: %+v", a)
	}

	// The genuine push, untouched, still works: nothing above used its code.
	if status, body := x.postPush(valid); status != 200 || body != "success" {
		t.Fatalf("the valid push: %d %q", status, body)
	}
	if a := x.call("GET", x.apiPath(), appidHeader("tt02app"), ""); a.Status != 200 || a.Data.AppID != "tt02app" {
		t.Fatalf("tt02app after its AUTHORIZED push: %+v", a)
	}
}

func TestValidPushIsAnsweredExactlySuccessAndActedOnOnceWhenRetried(t *testing.T) {
	x := newE2E(t, tokensource.V2, emulator.Lifetimes{})
	code, err := x.emu.Authorize("tt01app", false)
	if err != nil {
		t.Fatal(err)
	}
	push := seal(t, e2eComponent, authorizedPayload("tt01app", code))
	// The platform retries a push up to 3 times when it thinks it failed.
	for i := 1; i <= 3; i++ {
		status, body := x.postPush(push)
		if status != 200 || body != "success" {
			t.Fatalf("delivery %d: %d %q (want exactly \"success\")", i, status, body)
		}
	}
	s := x.emu.Stats()
	if got := s.App("tt01app").Exchanges; got != 1 {
		t.Fatalf("3 deliveries of one AUTHORIZED push made %d exchanges", got)
	}
	if s.Calls[emulator.OpExchange] != 1 {
		t.Fatalf("exchange calls = %d", s.Calls[emulator.OpExchange])
	}
	if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 || a.Data.AppID != "tt01app" {
		t.Fatalf("after the push: %+v", a)
	}

	// A new ticket push replaces the stored ticket.
	ticketFile := filepath.Join(x.storage, "tptoken", e2eComponent, "ticket.json")
	old, err := os.ReadFile(ticketFile)
	if err != nil {
		t.Fatal(err)
	}
	status, body := x.postPush(seal(t, e2eComponent, pushPayload{Ticket: x.emu.Ticket() + "x", MsgType: "Ticket", Event: "PUSH"}))
	if status != 200 || body != "success" {
		t.Fatalf("ticket push: %d %q", status, body)
	}
	if now, _ := os.ReadFile(ticketFile); bytes.Equal(now, old) {
		t.Fatal("a valid ticket push left the stored ticket unchanged")
	}
}

func TestUnauthorizedPushRevokesThatAppidOnly(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{})
	x.authorize("tt01app", "tt02app")
	for _, id := range []string{"tt01app", "tt02app"} {
		if a := x.call("GET", x.apiPath(), appidHeader(id), ""); a.Status != 200 {
			t.Fatalf("%s before: %+v", id, a)
		}
	}
	status, body := x.postPush(seal(t, e2eComponent, pushPayload{AppID: "tt01app", TpAppID: e2eComponent,
		Event: "UNAUTHORIZED", EventTime: push.FormatTime(time.Now())}))
	if status != 200 || body != "success" {
		t.Fatalf("UNAUTHORIZED push: %d %q", status, body)
	}
	calls := totalCalls(x.emu.Stats())
	for range 3 {
		a := x.call("GET", x.apiPath(), appidHeader("tt01app"), "")
		if a.Status != 403 || a.Errno != 40022 || a.TPToken.Error != "unauthorized" || !strings.Contains(a.Message, "tt01app") {
			t.Fatalf("tt01app after UNAUTHORIZED: %+v", a)
		}
	}
	if n := totalCalls(x.emu.Stats()); n != calls {
		t.Fatalf("requests for a revoked appid made %d platform calls", n-calls)
	}
	if a := x.call("GET", x.apiPath(), appidHeader("tt02app"), ""); a.Status != 200 || a.Data.AppID != "tt02app" {
		t.Fatalf("tt02app after tt01app's UNAUTHORIZED: %+v", a)
	}
}

func TestAuthorizationRedirectExchangesTheCodeAndShowsNoSecret(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{})
	code, err := x.emu.Authorize("tt07app", false)
	if err != nil {
		t.Fatal(err)
	}
	q := url.Values{"authorization_code": {code}, "expires_in": {"3600"}, "state": {"from-console"}}.Encode()
	status, hdr, page := x.getEvents(q)
	if status != 200 {
		t.Fatalf("redirect: %d %s", status, page)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Fatalf("Content-Type %q", ct)
	}
	if !strings.Contains(page, "tt07app") || !strings.Contains(page, e2eComponent) {
		t.Fatalf("the page does not name the authorizer and the TP: %s", page)
	}
	if hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("Cache-Control %q", hdr.Get("Cache-Control"))
	}
	x.assertNoSecretIn("the redirect page", page)
	if s := x.emu.Stats().App("tt07app"); s.Exchanges != 1 {
		t.Fatalf("exchanges = %d", s.Exchanges)
	}
	if a := x.call("GET", x.apiPath(), appidHeader("tt07app"), ""); a.Status != 200 || a.Data.AppID != "tt07app" {
		t.Fatalf("after the redirect: %+v", a)
	}

	// A browser reloading the page sees the same result: the code index
	// answers without sending the used code to the platform again.
	status, _, page = x.getEvents(q)
	x.assertNoSecretIn("the reloaded redirect page", page)
	if status != 200 || !strings.Contains(page, "tt07app") {
		t.Fatalf("reloaded redirect page: status %d: %s", status, page)
	}
	if n := x.emu.Stats().Calls["exchange"]; n != 1 {
		t.Fatalf("the used code was sent to the platform again (%d exchange calls)", n)
	}
	if s := x.emu.Stats().App("tt07app"); s.Exchanges != 1 {
		t.Fatalf("a reloaded redirect exchanged again: %d exchanges", s.Exchanges)
	}
	if a := x.call("GET", x.apiPath(), appidHeader("tt07app"), ""); a.Status != 200 || a.Data.AppID != "tt07app" {
		t.Fatalf("after a reload of the redirect: %+v", a)
	}
}

func TestRedirectWithoutCodeIs400(t *testing.T) {
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{})
	calls := totalCalls(x.emu.Stats())
	for _, q := range []string{"", "expires_in=3600", "authorization_code="} {
		status, _, body := x.getEvents(q)
		if status != 400 || !strings.Contains(body, "authorization_code") {
			t.Errorf("GET /?%s: %d %q", q, status, body)
		}
	}
	if n := totalCalls(x.emu.Stats()); n != calls {
		t.Fatalf("a redirect without a code made %d platform calls", n-calls)
	}
}
