package tokensource

import "github.com/tptoken/caddy-tptoken/tokensource/secret"

// Secret is a token, refresh token, ticket, code or key: every way of printing
// it redacts, and Reveal gives the value where it must go on the wire. It is
// secret.Secret, shared with the push package.
type Secret = secret.Secret
