package push

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// The public vector: SKIT's unit test (fudiwei/DotNetCore.SKIT.FlurlHttpClient.ByteDance,
// test/SKIT.FlurlHttpClient.ByteDance.MicroApp.UnitTests/TestCase_EventVerificationTests.cs),
// checked against the official demo's algorithm (docs/protocol.md §Pushes).
const (
	vecToken     = "QDG6eK"
	vecAESKey    = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
	vecAppID     = "tt5823bf96d3bd56c7"
	vecTimeStamp = "1409659813"
	vecNonce     = "1372623149"
	vecSignature = "e51e71c9087fc57ae1cf8eb25c0d1ba837db5b7c"
	vecEncrypt   = "OheJ/nrK5Liim/H6TjL6ufUBwoxRP4sy2e0mS7IO47WESBIHgIXdGLwhs8iDCgMsPe0I78q2jUNtdO7w6+Vg+gtmEm5mbcljWv18Fs5hw91+hwID9uOGNC5ICeLGMMXW0uaGtqn8XgwXxtROAK220M5oRYK9MvmIoU/Q7Tvx1xnP4Jfunww+2mYqgD3YIYvTFVReX+3BeRuBh7zOK7tRbdqXaPbK/Cko0Vnt82rikDmItgXLUtJC4wxJohhXKZGb/12oFq6L/Uy+CtLqVLZMIH4uxlb5cO9exYfArVocZTc="
	vecTicket    = "8c0da4968b0d1e28acbc1d738a56607d"
)

func vecBody() []byte {
	return fmt.Appendf(nil, `{"Nonce":%q,"TimeStamp":%q,"Encrypt":%q,"MsgSignature":%q}`, vecNonce, vecTimeStamp, vecEncrypt, vecSignature)
}

func newVecCrypto(t testing.TB) *Crypto {
	t.Helper()
	p, err := NewCrypto(vecToken, vecAESKey, vecAppID)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPushSignatureMatchesPublicVector(t *testing.T) {
	if got := Signature(vecToken, vecTimeStamp, vecNonce, vecEncrypt); got != vecSignature {
		t.Fatalf("Signature = %s, want %s", got, vecSignature)
	}
	// The order of the arguments does not matter: they are sorted.
	if got := Signature(vecEncrypt, vecNonce, vecToken, vecTimeStamp); got != vecSignature {
		t.Fatalf("Signature is order dependent: %s", got)
	}
}

func TestPushOpenDecryptsPublicVectorTicket(t *testing.T) {
	m, err := newVecCrypto(t).Open(vecBody())
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2019, 1, 14, 12, 45, 10, 0, time.FixedZone("CST", 8*3600))
	if m.Kind != Ticket || m.Ticket.Reveal() != vecTicket || !m.CreateTime.Equal(want) ||
		m.MsgType != "Ticket" || m.Event != "PUSH" || m.FromUserName != "ByteDanceMicroApp" {
		t.Fatalf("got %+v (ticket ok: %v, time %v)", m, m.Ticket.Reveal() == vecTicket, m.CreateTime)
	}
	if got := m.CreateTime.UTC(); !got.Equal(time.Date(2019, 1, 14, 4, 45, 10, 0, time.UTC)) {
		t.Fatalf("CreateTime is not Beijing time: %v", got)
	}
}

func TestPushOpenAcceptsUppercaseSignatureAndNumericTimestamp(t *testing.T) {
	p := newVecCrypto(t)
	body := fmt.Appendf(nil, `{"Nonce":%s,"TimeStamp":%s,"Encrypt":%q,"MsgSignature":%q}`,
		vecNonce, vecTimeStamp, vecEncrypt, strings.ToUpper(vecSignature))
	if _, err := p.Open(body); err != nil {
		t.Fatal(err)
	}
}

func TestNewPushCryptoRejectsBadConfigWithoutEchoingSecrets(t *testing.T) {
	tests := []struct {
		name, token, key, appid string
	}{
		{"empty token", "", vecAESKey, vecAppID},
		{"empty appid", vecToken, vecAESKey, ""},
		{"key too short", vecToken, vecAESKey[:42], vecAppID},
		{"key too long", vecToken, vecAESKey + "A", vecAppID},
		{"key not base64", vecToken, "!" + vecAESKey[1:], vecAppID},
		{"key 43 chars of padding", vecToken, strings.Repeat("=", 43), vecAppID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewCrypto(tt.token, tt.key, tt.appid)
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
			for _, s := range []string{tt.token, tt.key} {
				if len(s) > 3 && strings.Contains(err.Error(), s) {
					t.Fatalf("error %q echoes a secret", err)
				}
			}
		})
	}
}

// fixedRand is a deterministic random source for Seal.
type fixedRand byte

func (r fixedRand) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = byte(r) + byte(i)
	}
	return len(b), nil
}

func TestPushSealOpenRoundTrip(t *testing.T) {
	cst := time.FixedZone("CST", 8*3600)
	evtTime := time.Date(2024, 5, 6, 7, 8, 9, 0, cst)
	tests := []struct {
		name    string
		payload string
		check   func(t *testing.T, m *Message)
	}{
		{"ticket", `{"Ticket":"t-123","FromUserName":"ByteDanceMicroApp","CreateTime":"2024-05-06 07:08:09","MsgType":"Ticket","Event":"PUSH"}`,
			func(t *testing.T, m *Message) {
				if m.Kind != Ticket || m.Ticket.Reveal() != "t-123" || !m.CreateTime.Equal(evtTime) {
					t.Fatalf("got %+v", m)
				}
			}},
		{"ticket by MsgType only", `{"Ticket":"t-9","MsgType":"Ticket"}`,
			func(t *testing.T, m *Message) {
				if m.Kind != Ticket || m.Ticket.Reveal() != "t-9" || !m.CreateTime.IsZero() {
					t.Fatalf("got %+v", m)
				}
			}},
		{"authorized, expiry as number", `{"AppId":"tt01","TpAppId":"` + vecAppID + `","EventTime":"2024-05-06 07:08:09","Event":"AUTHORIZED","AuthorizationCode":"code-1","AuthorizationCodeExpiresIn":3600,"AppName":"Demo"}`,
			func(t *testing.T, m *Message) {
				if m.Kind != Authorized || m.AppID != "tt01" || m.TpAppID != vecAppID || m.AuthorizationCode.Reveal() != "code-1" ||
					m.CodeExpiresIn != 3600 || !m.EventTime.Equal(evtTime) || m.AppName != "Demo" {
					t.Fatalf("got %+v", m)
				}
			}},
		{"authorized, expiry as string", `{"AppId":"tt01","Event":"AUTHORIZED","AuthorizationCode":"code-2","AuthorizationCodeExpiresIn":"3600"}`,
			func(t *testing.T, m *Message) {
				if m.Kind != Authorized || m.CodeExpiresIn != 3600 || m.AuthorizationCode.Reveal() != "code-2" || !m.EventTime.IsZero() {
					t.Fatalf("got %+v", m)
				}
			}},
		{"authorized, expiry unparsable is unknown", `{"AppId":"tt01","Event":"AUTHORIZED","AuthorizationCode":"c","AuthorizationCodeExpiresIn":"soon","EventTime":""}`,
			func(t *testing.T, m *Message) {
				if m.Kind != Authorized || m.CodeExpiresIn != 0 {
					t.Fatalf("got %+v", m)
				}
			}},
		{"update authorized", `{"AppId":"tt02","TpAppId":"` + vecAppID + `","EventTime":"2024-05-06 07:08:09","Event":"UPDATE_AUTHORIZED","AuthorizationCode":"code-3","AuthorizationCodeExpiresIn":3600}`,
			func(t *testing.T, m *Message) {
				if m.Kind != UpdateAuthorized || m.AppID != "tt02" || m.AuthorizationCode.Reveal() != "code-3" || m.CodeExpiresIn != 3600 {
					t.Fatalf("got %+v", m)
				}
			}},
		{"unauthorized", `{"AppId":"tt03","TpAppId":"` + vecAppID + `","EventTime":"2024-05-06 07:08:09","Event":"UNAUTHORIZED"}`,
			func(t *testing.T, m *Message) {
				if m.Kind != Unauthorized || m.AppID != "tt03" || !m.EventTime.Equal(evtTime) {
					t.Fatalf("got %+v", m)
				}
			}},
		{"other event is kept", `{"AppId":"tt04","Event":"PACKAGE_AUDIT"}`,
			func(t *testing.T, m *Message) {
				if m.Kind != Other || m.Event != "PACKAGE_AUDIT" {
					t.Fatalf("got %+v", m)
				}
			}},
		{"unicode and block-aligned sizes", `{"AppId":"tt05","Event":"UNAUTHORIZED","AppName":"小程序"}`,
			func(t *testing.T, m *Message) {
				if m.AppName != "小程序" {
					t.Fatalf("got %+v", m)
				}
			}},
	}
	p := newVecCrypto(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, err := p.Seal([]byte(tt.payload), "1700000000", "42")
			if err != nil {
				t.Fatal(err)
			}
			m, err := p.Open(body)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, m)
		})
	}
}

func TestPushSealPadsEveryLengthTo32ByteBlocks(t *testing.T) {
	p := newVecCrypto(t)
	for n := range 70 {
		msg := fmt.Appendf(nil, `{"Ticket":"%s","MsgType":"Ticket"}`, strings.Repeat("x", n+1))
		body, err := p.Seal(msg, "1", "2")
		if err != nil {
			t.Fatal(err)
		}
		var env struct{ Encrypt string }
		if err := json.Unmarshal(body, &env); err != nil {
			t.Fatal(err)
		}
		ct, _ := base64.StdEncoding.DecodeString(env.Encrypt)
		if len(ct)%32 != 0 {
			t.Fatalf("length %d: ciphertext %d bytes is not a multiple of 32", n, len(ct))
		}
		if _, err := p.Open(body); err != nil {
			t.Fatalf("length %d: %v", n, err)
		}
	}
}

func TestPushSealIsDeterministicWithRand(t *testing.T) {
	p := newVecCrypto(t)
	p.Rand = fixedRand(7)
	a, err := p.Seal([]byte(`{"Ticket":"x","MsgType":"Ticket"}`), "1", "2")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := p.Seal([]byte(`{"Ticket":"x","MsgType":"Ticket"}`), "1", "2")
	if !bytes.Equal(a, b) {
		t.Fatal("Seal with a fixed Rand is not deterministic")
	}
	p.Rand = nil
	c, _ := p.Seal([]byte(`{"Ticket":"x","MsgType":"Ticket"}`), "1", "2")
	if bytes.Equal(a, c) {
		t.Fatal("Seal without Rand reuses the fixed random prefix")
	}
}

// sealRaw encrypts arbitrary block-aligned plaintext and signs it, so tests can
// build pushes with any padding and layout.
func sealRaw(t testing.TB, plain []byte) []byte {
	t.Helper()
	key, _ := base64.StdEncoding.DecodeString(vecAESKey + "=")
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	if len(plain)%aes.BlockSize != 0 {
		t.Fatalf("sealRaw: %d bytes is not block aligned", len(plain))
	}
	ct := make([]byte, len(plain))
	cipher.NewCBCEncrypter(block, key[:16]).CryptBlocks(ct, plain)
	return signedBody(base64.StdEncoding.EncodeToString(ct))
}

func signedBody(encrypt string) []byte {
	return fmt.Appendf(nil, `{"Nonce":"n1","TimeStamp":"1700000000","Encrypt":%q,"MsgSignature":%q}`,
		encrypt, Signature(vecToken, "1700000000", "n1", encrypt))
}

// layout builds [32 random][len][msg][appid] with an explicit length field.
func layout(lenField uint32, msg, appid string) []byte {
	b := bytes.Repeat([]byte{0xA5}, 32)
	b = binary.BigEndian.AppendUint32(b, lenField)
	b = append(b, msg...)
	return append(b, appid...)
}

// pad appends n bytes of value v.
func pad(b []byte, n int, v byte) []byte { return append(b, bytes.Repeat([]byte{v}, n)...) }

// framed is a well-formed plaintext of msg for appid.
func framed(msg, appid string) []byte { return pkcs32(layout(uint32(len(msg)), msg, appid)) }

// pkcs32 pads b properly to 32-byte blocks.
func pkcs32(b []byte) []byte {
	n := 32 - len(b)%32
	return pad(b, n, byte(n))
}

const ticketMsg = `{"Ticket":"SECRET-TICKET-VALUE","MsgType":"Ticket","Event":"PUSH"}`

func TestPushOpenRejectsMalformedPushes(t *testing.T) {
	p := newVecCrypto(t)
	good, err := p.Seal([]byte(ticketMsg), "1700000000", "n1")
	if err != nil {
		t.Fatal(err)
	}
	var goodEnv map[string]string
	if err := json.Unmarshal(good, &goodEnv); err != nil {
		t.Fatal(err)
	}
	withField := func(k, v string) []byte {
		m := map[string]string{}
		for kk, vv := range goodEnv {
			m[kk] = vv
		}
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		b, _ := json.Marshal(m)
		return b
	}
	ct, _ := base64.StdEncoding.DecodeString(goodEnv["Encrypt"])
	flip := func(i int) string {
		c := bytes.Clone(ct)
		c[i] ^= 0x01
		return base64.StdEncoding.EncodeToString(c)
	}
	// Inconsistent padding: the last byte says 5, one of the other four differs.
	inconsistent := layout(uint32(len(ticketMsg)), ticketMsg, vecAppID)
	inconsistent = pad(inconsistent, 32-(len(inconsistent)+5)%32, ' ')
	inconsistent = append(inconsistent, 5, 5, 4, 5, 5)
	// The length field points past the end of the plaintext.
	longLen := pkcs32(layout(uint32(len(ticketMsg)+len(vecAppID)+1), ticketMsg, vecAppID))
	hugeLen := pkcs32(layout(0xFFFFFFFF, ticketMsg, vecAppID))

	tests := []struct {
		name string
		body []byte
		want error
	}{
		{"bad signature", withField("MsgSignature", Signature("wrong-token", "1700000000", "n1", goodEnv["Encrypt"])), ErrSignature},
		{"signature not hex", withField("MsgSignature", "zz"), ErrSignature},
		{"signature of other timestamp", withField("TimeStamp", "1700000001"), ErrSignature},
		{"tampered ciphertext, not re-signed", withField("Encrypt", flip(len(ct)-20)), ErrSignature},
		{"tampered last block, re-signed", signedBody(flip(len(ct) - 20)), ErrMalformed},
		{"tampered message block, re-signed", signedBody(flip(40)), ErrMalformed},
		{"padding byte 0", sealRaw(t, pad(nil, 64, 0)), ErrMalformed},
		{"padding 0 after a message", sealRaw(t, pad(layout(uint32(len(ticketMsg)), ticketMsg, vecAppID), 32-(36+len(ticketMsg)+len(vecAppID))%32, 0)), ErrMalformed},
		{"padding over 32", sealRaw(t, pad(layout(uint32(len(ticketMsg)), ticketMsg, vecAppID), 32-(36+len(ticketMsg)+len(vecAppID))%32+32, 33)), ErrMalformed},
		{"padding longer than the plaintext", sealRaw(t, pad(nil, 16, 32)), ErrMalformed},
		{"inconsistent padding bytes", sealRaw(t, inconsistent), ErrMalformed},
		{"ciphertext not block aligned", signedBody(base64.StdEncoding.EncodeToString(ct[:len(ct)-1])), ErrMalformed},
		{"ciphertext empty", withField("Encrypt", ""), ErrMalformed},
		{"plaintext shorter than the header", sealRaw(t, pad(bytes.Repeat([]byte{1}, 16), 16, 16)), ErrMalformed},
		{"length field beyond the plaintext", sealRaw(t, longLen), ErrMalformed},
		{"length field huge", sealRaw(t, hugeLen), ErrMalformed},
		{"wrong appid suffix", sealRaw(t, pkcs32(layout(uint32(len(ticketMsg)), ticketMsg, "tt0000000000000000"))), ErrAppID},
		{"no appid suffix", sealRaw(t, pkcs32(layout(uint32(len(ticketMsg)), ticketMsg, ""))), ErrAppID},
		{"TpAppId of another TP", sealRaw(t, pkcs32(layout(uint32(len(`{"AppId":"tt1","TpAppId":"tt9","Event":"UNAUTHORIZED"}`)), `{"AppId":"tt1","TpAppId":"tt9","Event":"UNAUTHORIZED"}`, vecAppID))), ErrAppID},
		{"bad JSON inside, well framed", sealRaw(t, framed(`{"Ticket":`, vecAppID)), ErrMalformed},
		{"JSON array inside", sealRaw(t, framed(`[]`, vecAppID)), ErrMalformed},
		{"wrong JSON type inside", sealRaw(t, framed(`{"Ticket":123}`, vecAppID)), ErrMalformed},
		{"ticket push without ticket", sealRaw(t, framed(`{"Event":"PUSH"}`, vecAppID)), ErrMalformed},
		{"authorized without code", sealRaw(t, framed(`{"AppId":"tt1","Event":"AUTHORIZED"}`, vecAppID)), ErrMalformed},
		{"unauthorized without appid", sealRaw(t, framed(`{"Event":"UNAUTHORIZED"}`, vecAppID)), ErrMalformed},
		{"bad outer JSON", []byte(`{"Nonce":"1",`), ErrMalformed},
		{"outer JSON not an object", []byte(`"success"`), ErrMalformed},
		{"empty body", nil, ErrMalformed},
		{"outer field of wrong type", []byte(`{"Nonce":{},"TimeStamp":"1","Encrypt":"x","MsgSignature":"y"}`), ErrMalformed},
		{"missing Nonce", withField("Nonce", ""), ErrMalformed},
		{"missing TimeStamp", withField("TimeStamp", ""), ErrMalformed},
		{"missing MsgSignature", withField("MsgSignature", ""), ErrMalformed},
		{"Encrypt not base64", signedBody("not*base64!"), ErrMalformed},
	}
	secrets := []string{vecToken, vecAESKey, "SECRET-TICKET-VALUE", vecAESKey[:20]}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := p.Open(tt.body)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Open = %+v, %v; want %v", m, err, tt.want)
			}
			for _, s := range secrets {
				if strings.Contains(err.Error(), s) {
					t.Fatalf("error %q contains a secret", err)
				}
			}
		})
	}
}

func TestPushOpenErrorsNeverContainTicketOrCode(t *testing.T) {
	p := newVecCrypto(t)
	// A length field one short of the real message leaves part of the JSON,
	// ticket included, in the "suffix": the error must not show it.
	msg := `{"Ticket":"SECRET-TICKET-VALUE","Event":"PUSH","AuthorizationCode":"SECRET-CODE"}`
	for cut := 1; cut < len(msg); cut++ {
		body := sealRaw(t, pkcs32(layout(uint32(len(msg)-cut), msg, vecAppID)))
		_, err := p.Open(body)
		if err == nil {
			t.Fatalf("cut %d: accepted", cut)
		}
		if s := err.Error(); strings.Contains(s, "SECRET") || strings.Contains(s, vecToken) {
			t.Fatalf("cut %d: error %q leaks", cut, s)
		}
	}
}

func TestPushMessagePrintsRedacted(t *testing.T) {
	p := newVecCrypto(t)
	body, _ := p.Seal([]byte(`{"AppId":"tt01","Event":"AUTHORIZED","AuthorizationCode":"SECRET-CODE"}`), "1", "2")
	m, err := p.Open(body)
	if err != nil {
		t.Fatal(err)
	}
	j, _ := json.Marshal(m)
	for _, s := range []string{fmt.Sprintf("%v", m), fmt.Sprintf("%+v", m), fmt.Sprintf("%#v", m), string(j)} {
		if strings.Contains(s, "SECRET") {
			t.Fatalf("printed message leaks the code: %s", s)
		}
	}
}

func TestPushTimeFormatRoundTrips(t *testing.T) {
	ts := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	s := FormatTime(ts)
	if s != "2024-01-02 11:04:05" {
		t.Fatalf("FormatTime = %s", s)
	}
	if got := parseTime(s); !got.Equal(ts) {
		t.Fatalf("parseTime(%s) = %v", s, got)
	}
	if got := parseTime("1704164645"); !got.Equal(ts) {
		t.Fatalf("unix seconds: %v", got)
	}
	for _, bad := range []string{"", "  ", "yesterday", "2024-13-45 99:99:99"} {
		if got := parseTime(bad); !got.IsZero() {
			t.Fatalf("parseTime(%q) = %v, want zero", bad, got)
		}
	}
}

func FuzzOpen(f *testing.F) {
	p := newVecCrypto(f)
	f.Add(vecBody())
	for _, msg := range []string{ticketMsg, `{"AppId":"tt1","Event":"AUTHORIZED","AuthorizationCode":"c","AuthorizationCodeExpiresIn":"3600"}`, `{}`, ``} {
		b, err := p.Seal([]byte(msg), "1700000000", "n1")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"Nonce":1,"TimeStamp":2,"Encrypt":"","MsgSignature":""}`))
	f.Add([]byte(`{"Nonce":null}`))
	f.Add([]byte(`[`))
	f.Add([]byte{})
	f.Add(sealRaw(f, pad(nil, 32, 32)))
	f.Add(sealRaw(f, pkcs32(layout(0xFFFFFFF0, ticketMsg, vecAppID))))
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := p.Open(body)
		if (m == nil) == (err == nil) {
			t.Fatalf("Open returned %v and %v", m, err)
		}
		if err != nil && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrSignature) && !errors.Is(err, ErrAppID) {
			t.Fatalf("unclassified error %v", err)
		}
	})
}

// FuzzOpenPlaintext fuzzes what the decryption yields (padding, length,
// suffix, JSON), which FuzzOpen reaches only through a valid signature.
func FuzzOpenPlaintext(f *testing.F) {
	p := newVecCrypto(f)
	f.Add(pkcs32(layout(uint32(len(ticketMsg)), ticketMsg, vecAppID)))
	f.Add(framed(`{}`, vecAppID))
	f.Add(pad(nil, 32, 32))
	f.Add(pad(nil, 16, 0))
	f.Add(pkcs32(layout(0xFFFFFFFF, "", "")))
	f.Fuzz(func(t *testing.T, plain []byte) {
		if len(plain) == 0 || len(plain)%aes.BlockSize != 0 || len(plain) > 1<<16 {
			return
		}
		m, err := p.Open(sealRaw(t, plain))
		if err == nil && m == nil {
			t.Fatal("nil message without error")
		}
		if errors.Is(err, ErrSignature) {
			t.Fatalf("signature rejected: %v", err)
		}
	})
}
