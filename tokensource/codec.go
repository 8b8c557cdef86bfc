package tokensource

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// codec turns records into stored bytes and back, sealing them with AES-256-GCM
// when an encryption key is configured. The storage key is the additional data,
// so a sealed record cannot be moved to another key. Records are sealed with the
// current key and read with it or any previous key (key rotation): a sealed
// record names its key by a key id, and older records without one are tried
// with each key.
type codec struct {
	cur  *sealKey  // nil: plain JSON
	prev []sealKey // read only
}

type sealKey struct {
	aead cipher.AEAD
	id   string // keyID of the key
}

// sealed is the stored form of an encrypted record.
type sealed struct {
	Enc   string `json:"enc"`
	KeyID string `json:"kid,omitempty"`
	Nonce []byte `json:"nonce"`
	Data  []byte `json:"data"`
}

const sealAlg = "A256GCM"

// keyID names an encryption key in sealed records and in messages: the first
// 4 bytes of a SHA-256 of the key, in hex. It reveals nothing of the key.
func keyID(key []byte) string {
	sum := sha256.Sum256(append([]byte("tptoken encryption key id\x00"), key...))
	return hex.EncodeToString(sum[:4])
}

func newSealKey(key []byte) (sealKey, error) {
	if len(key) != 32 {
		return sealKey{}, errors.New("encryption key must be 32 bytes")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return sealKey{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return sealKey{}, err
	}
	return sealKey{aead: aead, id: keyID(key)}, nil
}

func newCodec(key []byte, previous [][]byte) (codec, error) {
	if len(key) == 0 {
		if len(previous) > 0 {
			return codec{}, errors.New("previous encryption keys need a current encryption key to seal records with")
		}
		return codec{}, nil
	}
	cur, err := newSealKey(key)
	if err != nil {
		return codec{}, err
	}
	c := codec{cur: &cur}
	for i, p := range previous {
		k, err := newSealKey(p)
		if err != nil {
			return codec{}, fmt.Errorf("previous encryption key %d: %v", i+1, err)
		}
		if k.id == cur.id {
			continue // the current key listed again: harmless
		}
		c.prev = append(c.prev, k)
	}
	return c, nil
}

// errEncrypted is returned when a sealed record is read without a key.
var errEncrypted = errors.New("record is encrypted at rest: configure the same encryption_key on this instance")

// Why a stored record cannot be read; decode wraps one of them (errors.Is).
// Rebuild tells them apart: a record this instance has no key for is
// someone's live authorization and is left alone, a damaged one is not.
var (
	// errRecordKey: sealed with a key this instance does not have (no
	// encryption_key, or another one).
	errRecordKey = errors.New("sealed with a key this instance does not have")
	// errRecordCorrupt: not a record (malformed JSON or envelope, a seal the
	// key it names cannot open, another appid's record).
	errRecordCorrupt = errors.New("damaged record")
)

// Seal states of a stored record (decodeSeal).
const (
	sealPlain    = "plain"    // plain JSON
	sealCurrent  = "current"  // sealed with the current key
	sealPrevious = "previous" // sealed with a previous key: re-sealed on its next write
)

func (c codec) encode(key string, v any) ([]byte, error) {
	plain, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if c.cur == nil {
		return plain, nil
	}
	nonce := make([]byte, c.cur.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return json.Marshal(sealed{Enc: sealAlg, KeyID: c.cur.id, Nonce: nonce, Data: c.cur.aead.Seal(nil, nonce, plain, []byte(key))})
}

func (c codec) decode(key string, b []byte, v any) error {
	_, err := c.decodeSeal(key, b, v)
	return err
}

// decodeSeal is decode that also says how the record was stored (sealPlain,
// sealCurrent, sealPrevious).
func (c codec) decodeSeal(key string, b []byte, v any) (string, error) {
	state := sealPlain
	var s sealed
	if json.Unmarshal(b, &s) == nil && s.Enc != "" {
		if s.Enc != sealAlg {
			return "", fmt.Errorf("record %s: unknown encryption %q: %w", key, s.Enc, errRecordCorrupt)
		}
		if c.cur == nil {
			return "", fmt.Errorf("record %s: %w (%w)", key, errEncrypted, errRecordKey)
		}
		if len(s.Nonce) != c.cur.aead.NonceSize() {
			return "", fmt.Errorf("record %s: malformed sealed record: %w", key, errRecordCorrupt)
		}
		plain, st, err := c.open(key, s)
		if err != nil {
			return "", err
		}
		b, state = plain, st
	}
	if err := json.Unmarshal(b, v); err != nil {
		return "", fmt.Errorf("record %s: malformed JSON: %v: %w", key, err, errRecordCorrupt)
	}
	return state, nil
}

// open decrypts s with the key it names, or, for a record sealed before key
// ids existed, with each configured key in turn.
func (c codec) open(key string, s sealed) ([]byte, string, error) {
	try := func(k sealKey) ([]byte, bool) {
		plain, err := k.aead.Open(nil, s.Nonce, s.Data, []byte(key))
		return plain, err == nil
	}
	if s.KeyID != "" {
		if s.KeyID == c.cur.id {
			if plain, ok := try(*c.cur); ok {
				return plain, sealCurrent, nil
			}
			return nil, "", fmt.Errorf("record %s: cannot decrypt with the key it names (key id %s): %w", key, s.KeyID, errRecordCorrupt)
		}
		for _, k := range c.prev {
			if k.id == s.KeyID {
				if plain, ok := try(k); ok {
					return plain, sealPrevious, nil
				}
				return nil, "", fmt.Errorf("record %s: cannot decrypt with the key it names (key id %s): %w", key, s.KeyID, errRecordCorrupt)
			}
		}
		return nil, "", fmt.Errorf("record %s: sealed with encryption key id %s, which is neither encryption_key (key id %s) nor one of previous_encryption_keys: configure that key: %w", key, s.KeyID, c.cur.id, errRecordKey)
	}
	if plain, ok := try(*c.cur); ok {
		return plain, sealCurrent, nil
	}
	for _, k := range c.prev {
		if plain, ok := try(k); ok {
			return plain, sealPrevious, nil
		}
	}
	// Sealed before key ids existed: a wrong key and damage look alike, and a
	// record that may be someone's live authorization is not called damaged.
	return nil, "", fmt.Errorf("record %s: cannot decrypt (wrong encryption_key?): %w", key, errRecordKey)
}
