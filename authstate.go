package tptoken

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"
)

// The state of an authorization link: a short value that tptoken puts in the
// redirect_uri of the links it makes (`caddy tptoken auth-link`), so that
// tptoken_events can tell a redirect that follows one of them from a request
// anyone could send, and (with require_state) exchange only those.
//
//	ts1.<base64url(expiry[8] | nonce[8] | HMAC-SHA256(key, "tptoken-state-v1" | expiry | nonce)[:16])>
//
// The key is derived with HKDF-SHA256 from the TP's component_appsecret (and
// its appid), which every instance already has: no new secret to configure or
// share, and no state to store. Changing the appsecret voids the links made
// before. A state holds no secret; it is an expiring proof of origin, valid for
// as many redirects as come before it expires.

const (
	statePrefix = "ts1."
	// StateParam is the query parameter that carries the state when it is not in the path.
	StateParam = "tptoken_state"
	// stateSlack is added to a link's life: the redirect follows the
	// authorization, which may end just before the link expires.
	stateSlack = 10 * time.Minute
)

var (
	errNoState  = errors.New("the redirect carries no authorization-link state")
	errBadState = errors.New("the authorization-link state is not one this TP issued")
	errOldState = errors.New("the authorization-link state has expired")
)

// stateSigner signs and checks states for one TP.
type stateSigner struct{ key []byte }

func newStateSigner(appSecret, componentAppID string) *stateSigner {
	key, err := hkdf.Key(sha256.New, []byte(appSecret), []byte(componentAppID), "tptoken auth-link state v1", 32)
	if err != nil {
		panic("tptoken: HKDF of a 32-byte key cannot fail: " + err.Error())
	}
	return &stateSigner{key: key}
}

func (s *stateSigner) mac(payload []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte("tptoken-state-v1"))
	m.Write(payload)
	return m.Sum(nil)[:16]
}

// sign returns a state valid until expiry.
func (s *stateSigner) sign(expiry time.Time) string {
	b := make([]byte, 16, 32)
	binary.BigEndian.PutUint64(b, uint64(expiry.Unix()))
	_, _ = rand.Read(b[8:16])
	b = append(b, s.mac(b)...)
	return statePrefix + base64.RawURLEncoding.EncodeToString(b)
}

// check verifies a state at time now.
func (s *stateSigner) check(state string, now time.Time) error {
	if state == "" {
		return errNoState
	}
	raw, ok := strings.CutPrefix(state, statePrefix)
	if !ok || len(raw) != 43 {
		return errBadState
	}
	b, err := base64.RawURLEncoding.DecodeString(raw)
	if err != nil || len(b) != 32 || !hmac.Equal(b[16:], s.mac(b[:16])) {
		return errBadState
	}
	if !now.Before(time.Unix(int64(binary.BigEndian.Uint64(b[:8])), 0)) {
		return errOldState
	}
	return nil
}

// stateOf finds the state of a redirect: the tptoken_state query parameter,
// else the last path segment when it is one (auth-link puts it in the path by
// default: the platform appends its own query to the redirect_uri).
func stateOf(r *http.Request, q url.Values) string {
	if v := q.Get(StateParam); v != "" {
		return v
	}
	if seg := path.Base(r.URL.Path); strings.HasPrefix(seg, statePrefix) {
		return seg
	}
	return ""
}

// withState returns redirectURI carrying state: as its last path segment
// (in "path"), or as the tptoken_state query parameter (in "query").
func withState(redirectURI, state, in string) (string, error) {
	u, err := url.Parse(redirectURI)
	if err != nil {
		return "", err
	}
	switch in {
	case "path":
		u.Path = strings.TrimSuffix(u.Path, "/") + "/" + state
		u.RawPath = ""
	case "query":
		q := u.Query()
		q.Set(StateParam, state)
		u.RawQuery = q.Encode()
	default:
		return "", errors.New(`state: use "path", "query" or "none"`)
	}
	return u.String(), nil
}
