package tptoken

import (
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// Secret options (component_appsecret, message_token, encoding_aes_key, the
// encryption keys) accept {env.*} and {file.*} placeholders, resolved at
// provision, so the secret itself is in no config file. This file resolves
// them and warns, once per config load, about set-ups that put the secrets at
// risk.

// secretValue resolves the placeholders of a secret option ("" stays ""). The
// error names the option, never the value.
func secretValue(repl *caddy.Replacer, option, raw string) (string, error) {
	if raw == "" {
		return "", nil
	}
	v, err := repl.ReplaceOrErr(raw, true, true)
	if err != nil {
		return "", fmt.Errorf("%s: a placeholder in it did not resolve (is the environment variable or file there?)", option)
	}
	return strings.TrimSpace(v), nil
}

// secretFields are the options that hold a secret, by their Caddyfile name.
func secretFields(c *Component) map[string][]string {
	return map[string][]string{
		"component_appsecret":      {c.ComponentAppSecret},
		"message_token":            {c.MessageToken},
		"encoding_aes_key":         {c.EncodingAESKey},
		"encryption_key":           {c.EncryptionKey},
		"previous_encryption_keys": c.PreviousEncryptionKeys,
	}
}

// resolvedAtProvision reports whether a configured value is read at provision
// time ({env.*} or {file.*}), so the secret itself is in no config file.
func resolvedAtProvision(raw string) bool {
	return strings.Contains(raw, "{env.") || strings.Contains(raw, "{file.")
}

// warnRiskySetup warns, once per config load, about set-ups that work but put
// every tenant's authorization at risk. It never blocks and never logs a
// value. rawKey: an encryption key was given as 32 characters taken as the
// key bytes (parseEncryptionKey), that is a passphrase.
func warnRiskySetup(logger *zap.Logger, c *Component, rawKey bool) {
	for _, name := range []string{"component_appsecret", "message_token", "encoding_aes_key", "encryption_key", "previous_encryption_keys"} {
		for _, raw := range secretFields(c)[name] {
			if raw != "" && !resolvedAtProvision(raw) {
				logger.Warn("a secret is written in the configuration itself (literally, or through {$VAR}, which the Caddyfile adapter substitutes): "+
					"it is in the adapted JSON, in autosave.json and in the admin API's GET /config/. Write it as {env.VAR} or {file./path/to/secret}",
					zap.String("option", name))
				break
			}
		}
	}
	if c.EncryptionKey == "" {
		logger.Warn("no encryption_key: every authorizer's tokens and refresh token are stored as plain JSON, usable by anyone who can read the storage. "+
			"Set encryption_key {env.TP_STORAGE_KEY} with a key made by `openssl rand -base64 32` (docs/deployment.md, Secrets)",
			zap.String("option", "encryption_key"))
	}
	if rawKey {
		logger.Warn("an encryption key is 32 characters used as the key bytes themselves: a 32-character passphrase is far weaker than 32 random bytes. "+
			"Make a key with `openssl rand -base64 32` and rotate to it (previous_encryption_keys; docs/deployment.md, Rotating the storage key)",
			zap.String("option", "encryption_key"))
	}
}
