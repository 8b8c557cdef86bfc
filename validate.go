package tptoken

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// The rule of each option value, one function per rule. The Caddyfile parser
// (caddyfile.go) calls them on the values written without a placeholder, so a
// mistake is reported with its line when the config is adapted; Provision
// calls them on every config, JSON included, once placeholders are resolved.
// Both paths thus give one message: the option, what is wrong, and what to
// write. In JSON an absent field (0, "") means the default, so Provision checks
// only the fields that are set; the Caddyfile has no way to write "unset".
//
// A message never quotes a secret: keys are described by their length.

// appIDShape is what an appid is made of (tokensource.ValidAppID).
const appIDShape = "1-64 letters, digits, '_' or '-'"

// What to write, per rule.
const (
	wantAppID        = "want " + appIDShape
	wantDuration     = "want a positive duration such as 10m"
	wantPositive     = "want a positive integer"
	wantRenewRate    = "want a positive number of renewals per second, such as 2 or 0.5"
	wantExchanges    = "want a positive number of exchanges per window, or off (-1 in JSON)"
	wantReplayBody   = "use off to disable the replay (-1 in JSON), or a size such as 1MiB"
	wantReplayMemory = "want a size such as 64MiB"
)

// invalid is the message of a value that breaks its option's rule: the option,
// the value as written (or as read), and what to write.
func invalid(option, value, want string) error {
	return fmt.Errorf("%s %s: %s", option, value, want)
}

// checkAppID: an appid (component_appid, a handler's component, an allow
// entry) is appIDShape.
func checkAppID(option, v string) error {
	if tokensource.ValidAppID(v) {
		return nil
	}
	return invalid(option, strconv.Quote(v), wantAppID)
}

// checkRequired: a component names its appid and its secret.
func checkRequired(c *Component) error {
	switch {
	case c.ComponentAppID == "":
		return errors.New("component_appid is required (for example {env.TP_COMPONENT_APPID})")
	case c.ComponentAppSecret == "":
		return errors.New("component_appsecret is required (for example {env.TP_COMPONENT_APPSECRET})")
	}
	return nil
}

// duplicateComponent: each TP is configured once.
func duplicateComponent(appID string) error {
	return fmt.Errorf("component_appid %s is configured twice: configure each TP in one tptoken block (one entry of components)", appID)
}

// apiFamily: api is v1 (the default) or v2.
func apiFamily(v string) (tokensource.Family, error) {
	f, err := tokensource.ParseFamily(v)
	if err != nil {
		return "", invalid("api", strconv.Quote(v), "use v1 or v2")
	}
	return f, nil
}

// checkEndpoint: the platform base URL is an absolute http(s) URL (the
// check tokensource.New makes too).
func checkEndpoint(v string) error {
	if _, ok := httpBase(v); !ok {
		return invalid("endpoint", strconv.Quote(v), "want an absolute http(s) URL such as https://open.douyin.com")
	}
	return nil
}

// httpBase parses an endpoint, trailing slashes dropped, and reports whether
// it is an absolute http(s) URL.
func httpBase(v string) (*url.URL, bool) {
	u, err := url.Parse(strings.TrimRight(v, "/"))
	return u, err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// encodingAESKeyLen is the length of the console's 消息加密解密 KEY.
const encodingAESKeyLen = 43

// checkEncodingAESKey: encoding_aes_key is the console's 43 base64
// characters, which decode to the 32-byte AES key (docs/protocol.md §Decryption).
func checkEncodingAESKey(v string) error {
	if len(v) == encodingAESKeyLen {
		if k, err := base64.StdEncoding.DecodeString(v + "="); err == nil && len(k) == 32 {
			return nil
		}
	}
	return fmt.Errorf("encoding_aes_key (%d characters): want the console's 消息加密解密 KEY, %d base64 characters", len(v), encodingAESKeyLen)
}

// checkPushKeys: message_token and encoding_aes_key go together.
func checkPushKeys(messageToken, encodingAESKey string) error {
	if (messageToken == "") != (encodingAESKey == "") {
		return errors.New("message_token and encoding_aes_key go together: set both to receive pushes")
	}
	return nil
}

// encryptionKey reads an encryption key (encryption_key, an entry of
// previous_encryption_keys): 32 bytes (parseEncryptionKey).
func encryptionKey(option, v string) ([]byte, error) {
	k, err := parseEncryptionKey(v)
	if err != nil {
		return nil, fmt.Errorf("%s (%d characters): want 32 bytes, written as 64 hex digits or in base64 (make one with: openssl rand -base64 32), or as 32 characters", option, len(v))
	}
	return k, nil
}

// checkPreviousKeys: previous_encryption_keys are read beside encryption_key.
func checkPreviousKeys(encryptionKey string, previous []string) error {
	if len(previous) > 0 && encryptionKey == "" {
		return errors.New("previous_encryption_keys needs encryption_key, the key records are sealed with now")
	}
	return nil
}

// checkDuration: every duration option is positive.
func checkDuration(option string, v caddy.Duration) error {
	if v > 0 {
		return nil
	}
	return invalid(option, time.Duration(v).String(), wantDuration)
}

// checkPositive: max_concurrent_calls and redirect_calls are positive.
func checkPositive(option string, n int) error {
	if n > 0 {
		return nil
	}
	return invalid(option, strconv.Itoa(n), wantPositive)
}

// checkRenewRate: renew_rate is a positive number.
func checkRenewRate(r float64) error {
	if r > 0 { // false for NaN too
		return nil
	}
	return invalid("renew_rate", strconv.FormatFloat(r, 'g', -1, 64), wantRenewRate)
}

// checkRedirectExchanges: redirect_exchanges is positive, or off (-1).
func checkRedirectExchanges(n int) error {
	if n > 0 || n == -1 {
		return nil
	}
	return invalid("redirect_exchanges", strconv.Itoa(n), wantExchanges)
}

// checkMaxReplayBody: max_replay_body is a positive size, or off (-1).
func checkMaxReplayBody(n int64) error {
	if n > 0 || n == -1 {
		return nil
	}
	return invalid("max_replay_body", strconv.FormatInt(n, 10), wantReplayBody)
}

// maxReplayMemoryLimit bounds max_replay_memory far above any memory, and far
// below the overflow of the budget's counter.
const maxReplayMemoryLimit = 1 << 62

// checkMaxReplayMemory: max_replay_memory is a positive size.
func checkMaxReplayMemory(n int64) error {
	if n > 0 && n <= maxReplayMemoryLimit {
		return nil
	}
	return invalid("max_replay_memory", strconv.FormatInt(n, 10), wantReplayMemory)
}

// checkToken: a handler injects the authorizer or the component token, or
// the one the API's path takes (auto), or an app's own token (handler_apps.go).
func checkToken(v string) error {
	if v == "authorizer" || v == "component" || v == "auto" || isAppKind(v) {
		return nil
	}
	return invalid("token", strconv.Quote(v), "use authorizer, component, auto, client_token or app_access_token")
}

// checkErrorResponse: failures are answered in the envelope (with an HTTP
// error status, or as the platform does, with 200) or handed to handle_errors.
func checkErrorResponse(v string) error {
	if v == "envelope" || v == "platform" || v == "handle_errors" {
		return nil
	}
	return invalid("error_response", strconv.Quote(v), "use envelope, platform or handle_errors")
}

// checkAppIDSource: the appid comes from a named header or query parameter,
// the first path segment, a placeholder, or the token slot.
func checkAppIDSource(s *AppIDSource) error {
	switch s.From {
	case "header", "query", "placeholder":
		if s.Name == "" {
			return fmt.Errorf("appid from %s needs a name: %s", s.From, appIDNameExample[s.From])
		}
	case "path":
	case "token":
		if s.Name != "" {
			return fmt.Errorf("appid from token takes no name (got %q): it reads every place where the platform's APIs take a token", s.Name)
		}
	default:
		return invalid("appid from", strconv.Quote(s.From), "use header, query, path, placeholder or token")
	}
	return nil
}

var appIDNameExample = map[string]string{
	"header":      "the header to read, such as " + defaultAppIDHeader,
	"query":       "the query parameter to read, such as appid",
	"placeholder": "the placeholder to read, such as {http.request.uri.query.appid}",
}

// checkAllowWithToken: an allow list is of authorizer appids, which a
// component token route does not have.
func checkAllowWithToken(token string, allow []string) error {
	if token == "component" && len(allow) > 0 {
		return errors.New("allow lists authorizer appids: it has no effect with token component; remove it")
	}
	return nil
}

// configError logs err as the short first line an operator reads, then
// returns it: Caddy wraps a provisioning error in its whole module chain
// ("loading new config: loading http app module: provision http: server
// srv0: setting up route handlers: route 0: ..."), which buries what to fix.
func configError(logger *zap.Logger, err error) error {
	if err != nil {
		logger.Error("configuration error: " + err.Error())
	}
	return err
}

// parseEncryptionKey accepts a 32-byte AES-256 key given as 32 raw characters,
// 64 hex digits or base64 (standard or URL alphabet, padded or not).
func parseEncryptionKey(s string) ([]byte, error) {
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
