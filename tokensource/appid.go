package tokensource

import (
	"fmt"
)

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

// CheckAppID returns a KindBadAppID error when appid is malformed. The error
// does not quote the value (it may be a token pasted in the wrong place): it
// gives its length and fingerprint.
func CheckAppID(appid string) error {
	if ValidAppID(appid) {
		return nil
	}
	return &Error{Kind: KindBadAppID, Msg: fmt.Sprintf("invalid appid (%d characters, fingerprint %s; not echoed back): an appid is 1-64 letters, digits, '_' or '-'",
		len(appid), Secret(appid).Fingerprint())}
}
