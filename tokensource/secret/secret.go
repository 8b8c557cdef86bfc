// Package secret holds Secret, the string type tptoken keeps every token,
// refresh token, ticket, code and key in. It is a package of its own so that
// the engine (tokensource) and the push wire format (tokensource/push) share
// one type without importing each other.
package secret

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"

	"go.uber.org/zap/zapcore"
)

// Secret is a token, refresh token, ticket, code or key. Every way of printing it
// (fmt verbs, JSON, zap, slog) yields "[REDACTED]", so a Secret that reaches a log
// line or an error by accident reveals nothing. Use Reveal where the value must
// leave the process: on the wire to the platform, or into the upstream request.
type Secret string

const redacted = "[REDACTED]"

// Reveal returns the secret value. Call it only where the value goes on the wire.
func (s Secret) Reveal() string { return string(s) }

// String redacts.
func (s Secret) String() string { return redacted }

// GoString redacts (%#v).
func (s Secret) GoString() string { return redacted }

// MarshalJSON redacts.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText redacts.
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// LogValue redacts for slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalLogObject redacts for zap.Object.
func (s Secret) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("value", redacted)
	return nil
}

// Fingerprint is a short, non-reversible identifier of the secret for logs and
// comparisons across instances (first 8 bytes of SHA-256, hex). It is empty for an
// empty secret.
func (s Secret) Fingerprint() string {
	if s == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:8])
}
