package tokensource

import (
	"fmt"
	"strings"
)

// Family is a token family of the platform. v1 and v2 tokens must never be mixed:
// a record obtained through one family is refreshed only through that family.
type Family string

const (
	// V1 is the legacy family on open.microapp.bytedance.com: tokens travel in the
	// query (component_appid + authorizer_access_token / component_access_token).
	V1 Family = "v1"
	// V2 is the family on open.douyin.com: tokens travel in the access-token header.
	V2 Family = "v2"
)

// Default platform endpoints per family.
const (
	defaultEndpointV1 = "https://open.microapp.bytedance.com"
	defaultEndpointV2 = "https://open.douyin.com"
)

// ParseFamily accepts "v1" and "v2" ("" means v1).
func ParseFamily(s string) (Family, error) {
	switch s {
	case "", "v1":
		return V1, nil
	case "v2":
		return V2, nil
	}
	return "", fmt.Errorf("unknown api family %q: use v1 or v2", s)
}

// DefaultEndpoint is the platform base URL of the family: its host for the
// token endpoints and for the open APIs alike.
func (f Family) DefaultEndpoint() string {
	if f == V2 {
		return defaultEndpointV2
	}
	return defaultEndpointV1
}

// componentPaths are the path prefixes of the family's TP-level APIs, which
// take the component token; every other open API takes an authorizer token
// (docs/protocol.md §Downstream APIs: v1 TP APIs live under /openapi/v1/tp/
// and the auth paths, v2 ones under /api/tpapp/).
var componentPaths = map[Family][]string{
	V1: {"/openapi/v1/tp/", "/openapi/v1/auth/", "/openapi/v2/auth/"},
	V2: {"/api/tpapp/"},
}

// TakesComponentToken reports whether an open API of the family at path
// takes the component token (a TP-level API) rather than an authorizer token.
func (f Family) TakesComponentToken(path string) bool {
	for _, p := range componentPaths[f] {
		if strings.HasPrefix(path, p) {
			return true
		}
	}
	return false
}
