package tokensource

// Test-only access, for the tests of package tokensource_test (which use the
// emulator, itself an importer of tokensource), to what the package does not
// export: the platform client and its error classification, the code check of
// the redirect, key ids, and the background loop's decisions.

type (
	Client       = client
	ClientConfig = clientConfig
	Grant        = grant
	Class        = class
)

const (
	ClassOther             = classOther
	ClassRetryable         = classRetryable
	ClassComponentToken    = classComponentToken
	ClassRefreshTokenDead  = classRefreshTokenDead
	ClassAuthorizationGone = classAuthorizationGone
	MaxCodeLen             = maxCodeLen
)

var (
	NewClient              = newClient
	Classify               = classify
	IsTimeout              = isTimeout
	IsRetryable            = isRetryable
	NeedsReauthorization   = needsReauthorization
	ValidAuthorizationCode = validAuthorizationCode
	KeyID                  = keyID
)
