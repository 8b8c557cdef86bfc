package tokensource

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
)

// Store is where records live and how instances coordinate. certmagic.Storage
// (and so every Caddy storage module) satisfies it. Load must return an error
// wrapping fs.ErrNotExist for a missing key.
//
// Lock is a cluster-wide named mutex: it blocks until acquired or ctx ends. The
// engine never assumes fencing: it reloads and re-checks every record after
// taking a lock, and keeps its critical sections short and bounded.
type Store interface {
	Lock(ctx context.Context, name string) error
	Unlock(ctx context.Context, name string) error
	Store(ctx context.Context, key string, value []byte) error
	Load(ctx context.Context, key string) ([]byte, error)
	Delete(ctx context.Context, key string) error
	List(ctx context.Context, path string, recursive bool) ([]string, error)
}

// TryLocker is implemented by stores that can try a lock without waiting
// (certmagic.TryLocker). Background work uses it so it never queues behind a request.
type TryLocker interface {
	TryLock(ctx context.Context, name string) (bool, error)
}

// ValidAppID reports whether s may be used as an appid (and so in a storage
// key): ^[A-Za-z0-9_-]{1,64}$. It is on the request path, so no regexp.
func ValidAppID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// CheckAppID returns a KindBadAppID error when appid is malformed.
func CheckAppID(appid string) error {
	if ValidAppID(appid) {
		return nil
	}
	shown := appid
	if len(shown) > 70 {
		shown = shown[:64] + "..."
	}
	return &Error{Kind: KindBadAppID, Msg: fmt.Sprintf("invalid appid %q: an appid is 1-64 letters, digits, '_' or '-'", shown)}
}

// keys builds the storage keys and lock names of one component (TP) appid.
// Everything lives under tptoken/<component_appid>/.
type keys struct{ prefix, lockPrefix string }

func newKeys(componentAppID string) keys {
	return keys{
		prefix:     "tptoken/" + componentAppID,
		lockPrefix: "tptoken." + componentAppID,
	}
}

func (k keys) authorizerDir() string              { return k.prefix + "/authorizers" }
func (k keys) authorizer(appid string) string     { return k.prefix + "/authorizers/" + appid + ".json" }
func (k keys) authorizerLock(appid string) string { return k.lockPrefix + ".authorizer." + appid }
func (k keys) ticket() string                     { return k.prefix + "/ticket.json" }
func (k keys) codeDir() string                    { return k.prefix + "/codes" }
func (k keys) code(fp string) string              { return k.prefix + "/codes/" + fp + ".json" }
func (k keys) componentToken(f Family) string {
	return k.prefix + "/component_token_" + string(f) + ".json"
}
func (k keys) componentTokenLock(f Family) string {
	return k.lockPrefix + ".component_token_" + string(f)
}

// codec turns records into stored bytes and back, sealing them with AES-256-GCM
// when an encryption key is configured. The storage key is the additional data,
// so a sealed record cannot be moved to another key.
type codec struct {
	aead cipher.AEAD // nil: plain JSON
}

// sealed is the stored form of an encrypted record.
type sealed struct {
	Enc   string `json:"enc"`
	Nonce []byte `json:"nonce"`
	Data  []byte `json:"data"`
}

const sealAlg = "A256GCM"

// ParseEncryptionKey accepts a 32-byte AES-256 key given as 32 raw characters,
// 64 hex digits or base64 (standard or URL alphabet, padded or not).
func ParseEncryptionKey(s string) ([]byte, error) {
	if len(s) == 32 {
		return []byte(s), nil
	}
	if len(s) == 64 {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == 32 {
			return b, nil
		}
	}
	return nil, errors.New("encryption_key must be 32 bytes: 32 characters, 64 hex digits, or base64 of 32 bytes (for example: openssl rand -base64 32)")
}

func newCodec(key []byte) (codec, error) {
	if len(key) == 0 {
		return codec{}, nil
	}
	if len(key) != 32 {
		return codec{}, errors.New("encryption key must be 32 bytes")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return codec{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return codec{}, err
	}
	return codec{aead: aead}, nil
}

// errEncrypted is returned when a sealed record is read without a key.
var errEncrypted = errors.New("record is encrypted at rest: configure the same encryption_key on this instance")

func (c codec) encode(key string, v any) ([]byte, error) {
	plain, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if c.aead == nil {
		return plain, nil
	}
	nonce := make([]byte, c.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return json.Marshal(sealed{Enc: sealAlg, Nonce: nonce, Data: c.aead.Seal(nil, nonce, plain, []byte(key))})
}

func (c codec) decode(key string, b []byte, v any) error {
	var s sealed
	if json.Unmarshal(b, &s) == nil && s.Enc != "" {
		if s.Enc != sealAlg {
			return fmt.Errorf("record %s: unknown encryption %q", key, s.Enc)
		}
		if c.aead == nil {
			return fmt.Errorf("record %s: %w", key, errEncrypted)
		}
		if len(s.Nonce) != c.aead.NonceSize() {
			return fmt.Errorf("record %s: malformed sealed record", key)
		}
		plain, err := c.aead.Open(nil, s.Nonce, s.Data, []byte(key))
		if err != nil {
			return fmt.Errorf("record %s: cannot decrypt (wrong encryption_key?)", key)
		}
		b = plain
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("record %s: malformed JSON: %v", key, err)
	}
	return nil
}

// isNotExist reports a missing key.
func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }
