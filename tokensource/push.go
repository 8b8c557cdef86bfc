package tokensource

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
)

// Push crypto: the platform POSTs component tickets and authorization events to
// the TP's 授权事件接收 URL as {"Nonce","TimeStamp","Encrypt","MsgSignature"}
// (docs/protocol.md §Pushes). MsgSignature is SHA1 over the sorted message token,
// timestamp, nonce and Encrypt; Encrypt is base64 of AES-256-CBC over
// [32 random bytes][4-byte big-endian length][JSON][TP appid], PKCS#7-padded to
// 32-byte blocks, with key = base64(EncodingAESKey+"=") and IV = key[:16].
//
// The invariant: a message is acted on only if its signature verifies, its
// padding and length are consistent and its appid suffix names our TP. No error
// of this file contains the message token, the key, a ticket or a code.

// Sentinel errors of push handling; match them with errors.Is.
var (
	// ErrPushConfig: the message token, EncodingAESKey or component appid is unusable.
	ErrPushConfig = errors.New("push crypto: invalid configuration")
	// ErrPushSignature: MsgSignature does not match the body (wrong message token, or tampering).
	ErrPushSignature = errors.New("push: signature mismatch")
	// ErrPushMalformed: the body, the ciphertext, the padding, the length or the inner JSON is malformed.
	ErrPushMalformed = errors.New("push: malformed message")
	// ErrPushAppID: the message is addressed to another TP (appid suffix or TpAppId).
	ErrPushAppID = errors.New("push: message is for another component appid")
)

// pushBlockSize is the padding block of the platform (PKCS#7 over 32 bytes,
// not the AES block size).
const pushBlockSize = 32

// pushRandomLen is the random prefix of the plaintext (32 bytes: unlike WeChat's 16).
const pushRandomLen = 32

// EncodingAESKeyLen is the length of the 消息加密解密 KEY.
const EncodingAESKeyLen = 43

// PushCrypto verifies, decrypts and (for emulators and tests) seals platform
// pushes of one TP. It is safe for concurrent use.
type PushCrypto struct {
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

// NewPushCrypto builds the push crypto of a TP from its 消息验证 TOKEN
// (messageToken), its 43-character 消息加密解密 KEY (encodingAESKey) and its
// component appid. Errors wrap ErrPushConfig and never contain the secret values.
func NewPushCrypto(messageToken, encodingAESKey, componentAppID string) (*PushCrypto, error) {
	if messageToken == "" {
		return nil, fmt.Errorf("%w: message_token is empty", ErrPushConfig)
	}
	if componentAppID == "" {
		return nil, fmt.Errorf("%w: component_appid is empty", ErrPushConfig)
	}
	if len(encodingAESKey) != EncodingAESKeyLen {
		return nil, fmt.Errorf("%w: encoding_aes_key must be exactly %d characters, got %d",
			ErrPushConfig, EncodingAESKeyLen, len(encodingAESKey))
	}
	// Not base64.StdEncoding.Strict(): console keys are arbitrary 43 characters,
	// so the last one usually has non-zero trailing bits, which the platform ignores.
	key, err := base64.StdEncoding.DecodeString(encodingAESKey + "=")
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("%w: encoding_aes_key is not 43 base64 characters decoding to 32 bytes", ErrPushConfig)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: encoding_aes_key: AES-256 key rejected", ErrPushConfig)
	}
	return &PushCrypto{token: messageToken, block: block, iv: key[:aes.BlockSize], appID: componentAppID}, nil
}

// ComponentAppID is the TP appid the messages must be addressed to.
func (p *PushCrypto) ComponentAppID() string { return p.appID }

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

// PushKind is what a push message is about.
type PushKind int

const (
	// PushOther is a message this package does not interpret (its Event is kept).
	PushOther PushKind = iota
	// PushTicket carries a component_ticket (MsgType "Ticket" and/or Event "PUSH").
	PushTicket
	// PushAuthorized: a mini-app authorized the TP (授权成功); carries a code.
	PushAuthorized
	// PushUpdateAuthorized: the retrieve-code notification (授权码找回); carries a code.
	PushUpdateAuthorized
	// PushUnauthorized: the mini-app revoked the authorization (授权解除).
	PushUnauthorized
)

func (k PushKind) String() string {
	switch k {
	case PushTicket:
		return "ticket"
	case PushAuthorized:
		return "authorized"
	case PushUpdateAuthorized:
		return "update_authorized"
	case PushUnauthorized:
		return "unauthorized"
	}
	return "other"
}

// PushMessage is a decrypted, verified push. Ticket and AuthorizationCode are
// Secrets: printing or logging a PushMessage redacts them.
type PushMessage struct {
	Kind PushKind

	// Timestamp is the signed TimeStamp of the envelope; ID identifies the
	// delivery (a hash of MsgSignature, which covers timestamp, nonce and
	// ciphertext): a retry of the same body has the same ID.
	Timestamp time.Time
	ID        string

	// Event is the Event field as pushed ("PUSH", "AUTHORIZED", ...); MsgType is
	// "Ticket" for ticket pushes.
	Event        string
	MsgType      string
	FromUserName string

	// Ticket pushes.
	Ticket     Secret
	CreateTime time.Time // zero when absent or unparsable

	// Authorization events.
	AppID             string    // the authorizer (mini-app) appid
	TpAppID           string    // the TP appid named in the payload (may be empty)
	EventTime         time.Time // zero when absent or unparsable
	AuthorizationCode Secret
	CodeExpiresIn     int // seconds; 0 when absent or unparsable

	// Present only for 代创建 mini-apps.
	AppName     string
	AppIcon     string
	CompanyName string
}

// pushEnvelope is the POST body. Nonce and TimeStamp are usually strings; a
// number is accepted and signed as its literal text.
type pushEnvelope struct {
	Nonce        flexString `json:"Nonce"`
	TimeStamp    flexString `json:"TimeStamp"`
	Encrypt      string     `json:"Encrypt"`
	MsgSignature string     `json:"MsgSignature"`
}

// Open verifies and decrypts a push POST body. Errors wrap ErrPushSignature,
// ErrPushMalformed or ErrPushAppID. Open never panics, whatever body it gets;
// limiting the body size is the caller's job.
func (p *PushCrypto) Open(body []byte) (*PushMessage, error) {
	var env pushEnvelope
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, fmt.Errorf("%w: body is not a JSON object {Nonce, TimeStamp, Encrypt, MsgSignature}", ErrPushMalformed)
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
		return nil, fmt.Errorf("%w: missing %s", ErrPushMalformed, strings.Join(missing, ", "))
	}
	want := Signature(p.token, string(env.TimeStamp), string(env.Nonce), env.Encrypt)
	if subtle.ConstantTimeCompare([]byte(want), []byte(strings.ToLower(env.MsgSignature))) != 1 {
		return nil, fmt.Errorf("%w (check message_token)", ErrPushSignature)
	}
	stamp, ok := parsePushStamp(string(env.TimeStamp))
	if !ok {
		return nil, fmt.Errorf("%w: TimeStamp is not a Unix time", ErrPushMalformed)
	}
	plain, err := p.decrypt(env.Encrypt)
	if err != nil {
		return nil, err
	}
	m, err := p.parse(plain)
	if err != nil {
		return nil, err
	}
	m.Timestamp, m.ID = stamp, Secret(strings.ToLower(env.MsgSignature)).Fingerprint()
	return m, nil
}

// parsePushStamp reads the envelope's TimeStamp: Unix seconds as in the
// platform's examples, or milliseconds when it has 13 digits or more
// (docs/protocol.md, "Pushes: time window and replays").
func parsePushStamp(s string) (time.Time, bool) {
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
func (p *PushCrypto) decrypt(encrypt string) ([]byte, error) {
	ct, err := base64.StdEncoding.DecodeString(encrypt)
	if err != nil {
		return nil, fmt.Errorf("%w: Encrypt is not base64", ErrPushMalformed)
	}
	if len(ct) == 0 || len(ct)%aes.BlockSize != 0 {
		return nil, fmt.Errorf("%w: ciphertext length %d is not a positive multiple of %d", ErrPushMalformed, len(ct), aes.BlockSize)
	}
	pt := make([]byte, len(ct))
	cipher.NewCBCDecrypter(p.block, p.iv).CryptBlocks(pt, ct)

	pad := int(pt[len(pt)-1])
	if pad < 1 || pad > pushBlockSize || pad > len(pt) {
		return nil, fmt.Errorf("%w: padding byte %d out of range 1..%d (wrong encoding_aes_key?)", ErrPushMalformed, pad, pushBlockSize)
	}
	if subtle.ConstantTimeCompare(pt[len(pt)-pad:], bytes.Repeat([]byte{byte(pad)}, pad)) != 1 {
		return nil, fmt.Errorf("%w: inconsistent padding (wrong encoding_aes_key?)", ErrPushMalformed)
	}
	pt = pt[:len(pt)-pad]
	if len(pt) < pushRandomLen+4 {
		return nil, fmt.Errorf("%w: plaintext too short", ErrPushMalformed)
	}
	n := uint64(binary.BigEndian.Uint32(pt[pushRandomLen : pushRandomLen+4]))
	rest := pt[pushRandomLen+4:]
	if n > uint64(len(rest)) {
		return nil, fmt.Errorf("%w: message length %d exceeds the plaintext (%d bytes)", ErrPushMalformed, n, len(rest))
	}
	msg, suffix := rest[:n], rest[n:]
	if subtle.ConstantTimeCompare(suffix, []byte(p.appID)) != 1 {
		return nil, fmt.Errorf("%w: appid suffix %s, want %s", ErrPushAppID, quoteAppID(suffix), p.appID)
	}
	return msg, nil
}

// quoteAppID shows an appid suffix only when it looks like a Douyin appid
// ("tt" + letters/digits): a suffix cut at a wrong length could hold part of
// the message, and so a ticket or a code, which must not reach an error.
func quoteAppID(b []byte) string {
	if len(b) <= 40 && bytes.HasPrefix(b, []byte("tt")) && ValidAppID(string(b)) {
		return strconv.Quote(string(b))
	}
	return fmt.Sprintf("(%d bytes, not an appid)", len(b))
}

// pushPayload is the decrypted JSON, read leniently: times are strings (or unix
// seconds), AuthorizationCodeExpiresIn a number or a string.
type pushPayload struct {
	Ticket                     string     `json:"Ticket"`
	FromUserName               string     `json:"FromUserName"`
	CreateTime                 flexString `json:"CreateTime"`
	MsgType                    string     `json:"MsgType"`
	Event                      string     `json:"Event"`
	AppID                      string     `json:"AppId"`
	TpAppID                    string     `json:"TpAppId"`
	EventTime                  flexString `json:"EventTime"`
	AuthorizationCode          string     `json:"AuthorizationCode"`
	AuthorizationCodeExpiresIn flexString `json:"AuthorizationCodeExpiresIn"`
	AppName                    string     `json:"AppName"`
	AppIcon                    string     `json:"AppIcon"`
	CompanyName                string     `json:"CompanyName"`
}

func (p *PushCrypto) parse(msg []byte) (*PushMessage, error) {
	var pl pushPayload
	// The error text of encoding/json can quote values, so it is not wrapped.
	if err := json.Unmarshal(msg, &pl); err != nil {
		return nil, fmt.Errorf("%w: decrypted message is not the expected JSON object", ErrPushMalformed)
	}
	m := &PushMessage{
		Event: pl.Event, MsgType: pl.MsgType, FromUserName: pl.FromUserName,
		Ticket: Secret(pl.Ticket), CreateTime: parsePushTime(string(pl.CreateTime)),
		AppID: pl.AppID, TpAppID: pl.TpAppID, EventTime: parsePushTime(string(pl.EventTime)),
		AuthorizationCode: Secret(pl.AuthorizationCode), CodeExpiresIn: parseSeconds(string(pl.AuthorizationCodeExpiresIn)),
		AppName: pl.AppName, AppIcon: pl.AppIcon, CompanyName: pl.CompanyName,
	}
	switch {
	case strings.EqualFold(pl.MsgType, "Ticket") || strings.EqualFold(pl.Event, "PUSH"):
		m.Kind = PushTicket
	case strings.EqualFold(pl.Event, "AUTHORIZED"):
		m.Kind = PushAuthorized
	case strings.EqualFold(pl.Event, "UPDATE_AUTHORIZED"):
		m.Kind = PushUpdateAuthorized
	case strings.EqualFold(pl.Event, "UNAUTHORIZED"):
		m.Kind = PushUnauthorized
	}
	if m.TpAppID != "" && m.TpAppID != p.appID {
		return nil, fmt.Errorf("%w: TpAppId %s, want %s", ErrPushAppID, quoteAppID([]byte(m.TpAppID)), p.appID)
	}
	switch m.Kind {
	case PushTicket:
		if m.Ticket == "" {
			return nil, fmt.Errorf("%w: ticket push without Ticket", ErrPushMalformed)
		}
	case PushAuthorized, PushUpdateAuthorized:
		if m.AppID == "" || m.AuthorizationCode == "" {
			return nil, fmt.Errorf("%w: %s push without AppId or AuthorizationCode", ErrPushMalformed, m.Event)
		}
	case PushUnauthorized:
		if m.AppID == "" {
			return nil, fmt.Errorf("%w: %s push without AppId", ErrPushMalformed, m.Event)
		}
	}
	return m, nil
}

// Seal is the inverse of Open, for emulators and tests: it wraps plaintextJSON
// (32 random bytes, length, message, component appid), pads it to 32-byte
// blocks, encrypts, signs with timestamp and nonce, and returns the POST body.
func (p *PushCrypto) Seal(plaintextJSON []byte, timestamp, nonce string) ([]byte, error) {
	if timestamp == "" || nonce == "" {
		return nil, errors.New("push seal: timestamp and nonce must not be empty")
	}
	if uint64(len(plaintextJSON)) > math.MaxUint32-1024 {
		return nil, errors.New("push seal: message too large")
	}
	random := make([]byte, pushRandomLen)
	if err := p.readRandom(random); err != nil {
		return nil, fmt.Errorf("push seal: random prefix: %w", err)
	}
	n := pushRandomLen + 4 + len(plaintextJSON) + len(p.appID)
	pad := pushBlockSize - n%pushBlockSize // 1..32
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

func (p *PushCrypto) readRandom(b []byte) error {
	if p.Rand == nil {
		_, err := rand.Read(b)
		return err
	}
	p.randM.Lock()
	defer p.randM.Unlock()
	_, err := io.ReadFull(p.Rand, b)
	return err
}

// beijing is the platform's time zone (UTC+8, no DST), fixed so no tzdata is needed.
var beijing = time.FixedZone("CST", 8*3600)

// PushTimeLayout is the layout of CreateTime and EventTime (Beijing time).
const PushTimeLayout = "2006-01-02 15:04:05"

// parsePushTime reads "yyyy-MM-dd HH:mm:ss" in Beijing time, or unix seconds.
// Missing or unparsable times give the zero time: they are informational.
func parsePushTime(s string) time.Time {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}
	}
	if t, err := time.ParseInLocation(PushTimeLayout, s, beijing); err == nil {
		return t
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && n > 0 && n < 1<<40 {
		return time.Unix(n, 0).In(beijing)
	}
	return time.Time{}
}

// FormatPushTime formats t as the platform does in push payloads.
func FormatPushTime(t time.Time) string { return t.In(beijing).Format(PushTimeLayout) }

// parseSeconds reads a non-negative number of seconds given as an integer, a
// float or a string of either; anything else is 0 (unknown).
func parseSeconds(s string) int {
	s = strings.TrimSpace(s)
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return n
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && f >= 0 && f < math.MaxInt32 {
		return int(f)
	}
	return 0
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
