package tokensource

import "fmt"

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

// defaultEndpoint is the platform base URL of the family.
func (f Family) defaultEndpoint() string {
	if f == V2 {
		return defaultEndpointV2
	}
	return defaultEndpointV1
}
