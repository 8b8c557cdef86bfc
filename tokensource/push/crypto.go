// Package push reads and writes the platform's pushes: the POSTs that carry
// component tickets and authorization events to a TP's 授权事件接收 URL, as
// {"Nonce","TimeStamp","Encrypt","MsgSignature"} (docs/protocol.md §Pushes).
// MsgSignature is SHA1 over the sorted message token, timestamp, nonce and
// Encrypt; Encrypt is base64 of AES-256-CBC over
// [32 random bytes][4-byte big-endian length][JSON][TP appid], PKCS#7-padded to
// 32-byte blocks, with key = base64(EncodingAESKey+"=") and IV = key[:16].
//
// The invariant: Open returns a Message only if its signature verifies, its
// padding and length are consistent and its appid suffix names our TP. No
// error of this package contains the message token, the key, a ticket or a
// code. What a push does to the token engine's state is tokensource's
// (HandlePush); this package knows only the wire format.
//
// crypto.go holds Crypto (Open, Seal, Signature); message.go the Message an
// opened push gives and the platform's time format.
package push

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tptoken/caddy-tptoken/tokensource/secret"
)

// Sentinel errors of push handling; match them with errors.Is.
var (
	// ErrConfig: the message token, EncodingAESKey or component appid is unusable.
	ErrConfig = errors.New("push crypto: invalid configuration")
	// ErrSignature: MsgSignature does not match the body (wrong message token, or tampering).
	ErrSignature = errors.New("push: signature mismatch")
	// ErrMalformed: the body, the ciphertext, the padding, the length or the inner JSON is malformed.
	ErrMalformed = errors.New("push: malformed message")
	// ErrAppID: the message is addressed to another TP (appid suffix or TpAppId).
	ErrAppID = errors.New("push: message is for another component appid")
)

// blockSize is the padding block of the platform (PKCS#7 over 32 bytes,
// not the AES block size).
const blockSize = 32

// randomLen is the random prefix of the plaintext (32 bytes: unlike WeChat's 16).
const randomLen = 32

// EncodingAESKeyLen is the length of the 消息加密解密 KEY.
const EncodingAESKeyLen = 43

// Crypto verifies, decrypts and (for emulators and tests) seals platform
// pushes of one TP. It is safe for concurrent use.
type Crypto struct {
	token string
	block cipher.Block
	iv    []byte
	appID string

	// Rand is the source of the 32 random bytes Seal puts in front of each
	// message; nil means crypto/rand. Set it before first use (emulators set a
	// deterministic stream); Seal serializes reads from it.
	Rand  io.Reader
	randM sync.Mutex
}

// NewCrypto builds the push crypto of a TP from its 消息验证 TOKEN
// (messageToken), its 43-character 消息加密解密 KEY (encodingAESKey) and its
// component appid. Errors wrap ErrConfig and never contain the secret values.
func NewCrypto(messageToken, encodingAESKey, componentAppID string) (*Crypto, error) {
	if messageToken == "" {
		return nil, fmt.Errorf("%w: message_token is empty", ErrConfig)
	}
	if componentAppID == "" {
		return nil, fmt.Errorf("%w: component_appid is empty", ErrConfig)
	}
	if len(encodingAESKey) != EncodingAESKeyLen {
		return nil, fmt.Errorf("%w: encoding_aes_key must be exactly %d characters, got %d",
			ErrConfig, EncodingAESKeyLen, len(encodingAESKey))
	}
	// Not base64.StdEncoding.Strict(): console keys are arbitrary 43 characters,
	// so the last one usually has non-zero trailing bits, which the platform ignores.
	key, err := base64.StdEncoding.DecodeString(encodingAESKey + "=")
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("%w: encoding_aes_key is not 43 base64 characters decoding to 32 bytes", ErrConfig)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: encoding_aes_key: AES-256 key rejected", ErrConfig)
	}
	return &Crypto{token: messageToken, block: block, iv: key[:aes.BlockSize], appID: componentAppID}, nil
}

// ComponentAppID is the TP appid the messages must be addressed to.
func (p *Crypto) ComponentAppID() string { return p.appID }

// Signature is the MsgSignature of a push: lowercase hex SHA1 of the
// lexicographically sorted concatenation of token, timestamp, nonce and encrypt.
func Signature(token, timestamp, nonce, encrypt string) string {
	parts := []string{token, timestamp, nonce, encrypt}
	sort.Strings(parts)
	h := sha1.New()
	for _, s := range parts {
		io.WriteString(h, s)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// envelope is the POST body. Nonce and TimeStamp are usually strings; a
// number is accepted and signed as its literal text.
type envelope struct {
	Nonce        flexString `json:"Nonce"`
	TimeStamp    flexString `json:"TimeStamp"`
	Encrypt      string     `json:"Encrypt"`
	MsgSignature string     `json:"MsgSignature"`
}

// Open verifies and decrypts a push POST body. Errors wrap ErrSignature,
// ErrMalformed or ErrAppID. Open never panics, whatever body it gets;
// limiting the body size is the caller's job.
func (p *Crypto) Open(body []byte) (*Message, error) {
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, fmt.Errorf("%w: body is not a JSON object {Nonce, TimeStamp, Encrypt, MsgSignature}", ErrMalformed)
	}
	var missing []string
	for _, f := range []struct{ name, v string }{
		{"Nonce", string(env.Nonce)}, {"TimeStamp", string(env.TimeStamp)},
		{"Encrypt", env.Encrypt}, {"MsgSignature", env.MsgSignature},
	} {
		if f.v == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: missing %s", ErrMalformed, strings.Join(missing, ", "))
	}
	want := Signature(p.token, string(env.TimeStamp), string(env.Nonce), env.Encrypt)
	if subtle.ConstantTimeCompare([]byte(want), []byte(strings.ToLower(env.MsgSignature))) != 1 {
		return nil, fmt.Errorf("%w (check message_token)", ErrSignature)
	}
	stamp, ok := parseStamp(string(env.TimeStamp))
	if !ok {
		return nil, fmt.Errorf("%w: TimeStamp is not a Unix time", ErrMalformed)
	}
	plain, err := p.decrypt(env.Encrypt)
	if err != nil {
		return nil, err
	}
	m, err := p.parse(plain)
	if err != nil {
		return nil, err
	}
	m.Timestamp, m.ID = stamp, secret.Secret(strings.ToLower(env.MsgSignature)).Fingerprint()
	return m, nil
}

// parseStamp reads the envelope's TimeStamp: Unix seconds as in the
// platform's examples, or milliseconds when it has 13 digits or more
// (docs/protocol.md, "Pushes: time window and replays").
func parseStamp(s string) (time.Time, bool) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	switch {
	case err != nil || n <= 0:
		return time.Time{}, false
	case n >= 1e12:
		return time.UnixMilli(n), true
	}
	return time.Unix(n, 0), true
}

// decrypt returns the JSON message of Encrypt, having checked padding, length
// and the appid suffix.
func (p *Crypto) decrypt(encrypt string) ([]byte, error) {
	ct, err := base64.StdEncoding.DecodeString(encrypt)
	if err != nil {
		return nil, fmt.Errorf("%w: Encrypt is not base64", ErrMalformed)
	}
	if len(ct) == 0 || len(ct)%aes.BlockSize != 0 {
		return nil, fmt.Errorf("%w: ciphertext length %d is not a positive multiple of %d", ErrMalformed, len(ct), aes.BlockSize)
	}
	pt := make([]byte, len(ct))
	cipher.NewCBCDecrypter(p.block, p.iv).CryptBlocks(pt, ct)

	pad := int(pt[len(pt)-1])
	if pad < 1 || pad > blockSize || pad > len(pt) {
		return nil, fmt.Errorf("%w: padding byte %d out of range 1..%d (wrong encoding_aes_key?)", ErrMalformed, pad, blockSize)
	}
	if subtle.ConstantTimeCompare(pt[len(pt)-pad:], bytes.Repeat([]byte{byte(pad)}, pad)) != 1 {
		return nil, fmt.Errorf("%w: inconsistent padding (wrong encoding_aes_key?)", ErrMalformed)
	}
	pt = pt[:len(pt)-pad]
	if len(pt) < randomLen+4 {
		return nil, fmt.Errorf("%w: plaintext too short", ErrMalformed)
	}
	n := uint64(binary.BigEndian.Uint32(pt[randomLen : randomLen+4]))
	rest := pt[randomLen+4:]
	if n > uint64(len(rest)) {
		return nil, fmt.Errorf("%w: message length %d exceeds the plaintext (%d bytes)", ErrMalformed, n, len(rest))
	}
	msg, suffix := rest[:n], rest[n:]
	if subtle.ConstantTimeCompare(suffix, []byte(p.appID)) != 1 {
		return nil, fmt.Errorf("%w: appid suffix %s, want %s", ErrAppID, quoteAppID(suffix), p.appID)
	}
	return msg, nil
}

// quoteAppID shows an appid suffix only when it looks like a Douyin appid
// ("tt" + letters/digits): a suffix cut at a wrong length could hold part of
// the message, and so a ticket or a code, which must not reach an error.
func quoteAppID(b []byte) string {
	if len(b) <= 40 && bytes.HasPrefix(b, []byte("tt")) && appIDAlphabet(b) {
		return strconv.Quote(string(b))
	}
	return fmt.Sprintf("(%d bytes, not an appid)", len(b))
}

// appIDAlphabet: b is letters, digits, '_' and '-' only, as an appid is.
func appIDAlphabet(b []byte) bool {
	for _, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Seal is the inverse of Open, for emulators and tests: it wraps plaintextJSON
// (32 random bytes, length, message, component appid), pads it to 32-byte
// blocks, encrypts, signs with timestamp and nonce, and returns the POST body.
func (p *Crypto) Seal(plaintextJSON []byte, timestamp, nonce string) ([]byte, error) {
	if timestamp == "" || nonce == "" {
		return nil, errors.New("push seal: timestamp and nonce must not be empty")
	}
	if uint64(len(plaintextJSON)) > math.MaxUint32-1024 {
		return nil, errors.New("push seal: message too large")
	}
	random := make([]byte, randomLen)
	if err := p.readRandom(random); err != nil {
		return nil, fmt.Errorf("push seal: random prefix: %w", err)
	}
	n := randomLen + 4 + len(plaintextJSON) + len(p.appID)
	pad := blockSize - n%blockSize // 1..32
	pt := make([]byte, 0, n+pad)
	pt = append(pt, random...)
	pt = binary.BigEndian.AppendUint32(pt, uint32(len(plaintextJSON)))
	pt = append(pt, plaintextJSON...)
	pt = append(pt, p.appID...)
	pt = append(pt, bytes.Repeat([]byte{byte(pad)}, pad)...)
	cipher.NewCBCEncrypter(p.block, p.iv).CryptBlocks(pt, pt)
	encrypt := base64.StdEncoding.EncodeToString(pt)
	return json.Marshal(struct {
		Nonce        string `json:"Nonce"`
		TimeStamp    string `json:"TimeStamp"`
		Encrypt      string `json:"Encrypt"`
		MsgSignature string `json:"MsgSignature"`
	}{nonce, timestamp, encrypt, Signature(p.token, timestamp, nonce, encrypt)})
}

func (p *Crypto) readRandom(b []byte) error {
	if p.Rand == nil {
		_, err := rand.Read(b)
		return err
	}
	p.randM.Lock()
	defer p.randM.Unlock()
	_, err := io.ReadFull(p.Rand, b)
	return err
}

// flexString accepts a JSON string, number, boolean or null and keeps its text
// (a number keeps its literal digits, so it signs as the platform sent it).
type flexString string

func (f *flexString) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*f = flexString(s)
		return nil
	}
	if bytes.Equal(b, []byte("null")) {
		*f = ""
		return nil
	}
	if len(b) > 0 && (b[0] == '{' || b[0] == '[') {
		return errors.New("expected a string or a number")
	}
	*f = flexString(b)
	return nil
}
