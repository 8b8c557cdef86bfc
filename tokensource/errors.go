package tokensource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// PlatformError is an error answered by the platform, in either envelope
// (v1 errno/message, v2 err_no/err_msg/log_id), or an HTTP failure of a platform
// call. The platform code is kept so callers can classify it.
type PlatformError struct {
	Op         string // what was called: "component_token", "exchange", "refresh", "retrieve", "app_list"
	Code       int    // errno / err_no; 0 for an HTTP-level failure
	Message    string // the platform's message (never holds a secret)
	LogID      string // v2 log_id, for support tickets
	HTTPStatus int    // HTTP status of the answer

	// The class an endpoint's own code table gives the answer (app token
	// endpoints: appclient.go), which classify reads before the global table:
	// codes mean different things at different endpoints.
	cls        class
	classified bool
}

func (e *PlatformError) Error() string {
	s := fmt.Sprintf("platform %s: ", e.Op)
	if e.Code != 0 {
		s += fmt.Sprintf("code %d", e.Code)
	} else {
		s += fmt.Sprintf("HTTP %d", e.HTTPStatus)
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.LogID != "" {
		s += " (log_id " + e.LogID + ")"
	}
	return s
}

// class is what a platform error means for the token engine.
type class int

const (
	classOther                  class = iota // not classified: fail the operation, do not retry
	classRetryable                           // transient: retry with backoff (40045, 40000, 28001005, 28001006, 5xx, timeouts)
	classComponentToken                      // the component token is expired or wrong: refetch it once (40009, 40010)
	classRefreshTokenDead                    // the refresh token is wrong or used: recover (40021)
	classAuthorizationGone                   // the authorizer revoked us or is banned (40004, 40022, 28001016)
	classCodeExpired                         // the authorization code expired or was used (40018)
	classInvalidAuthorizerToken              // a downstream API rejected the authorizer token (40020, 28001003, 28001008)
	classCredentialsRefused                  // an app token endpoint refused the app's credentials (40015, 40017; 10003, 10013)
	classRateLimited                         // an app token endpoint refused for rate (10020; HTTP 429)
)

func (c class) String() string {
	switch c {
	case classRetryable:
		return "retryable"
	case classComponentToken:
		return "component_token"
	case classRefreshTokenDead:
		return "refresh_token_dead"
	case classAuthorizationGone:
		return "authorization_gone"
	case classCodeExpired:
		return "code_expired"
	case classInvalidAuthorizerToken:
		return "invalid_authorizer_token"
	case classCredentialsRefused:
		return "credentials_refused"
	case classRateLimited:
		return "rate_limited"
	}
	return "other"
}

// codeClasses is the one table of platform codes the engine acts on
// (docs/protocol.md §Errors).
var codeClasses = map[int]class{
	40000:    classRetryable, // 系统错误
	40045:    classRetryable, // 生成 token 失败,请重试
	28001005: classRetryable, // 系统内部错误,请重试
	28001006: classRetryable, // 网络调用错误,请重试
	40009:    classComponentToken,
	40010:    classComponentToken,
	40021:    classRefreshTokenDead,
	40004:    classAuthorizationGone,
	40022:    classAuthorizationGone,
	28001016: classAuthorizationGone,
	40018:    classCodeExpired,
	40020:    classInvalidAuthorizerToken,
	28001003: classInvalidAuthorizerToken,
	28001008: classInvalidAuthorizerToken,
}

// rejectionCodes are the codes with which a downstream API says the token it
// was sent is not valid, by family and token kind ([v1, v2][authorizer,
// component]). Only these, read from the family's own field (v1 errno, v2
// err_no), make an answer a rejection of the injected token: v1 open APIs
// answer 40020 for the authorizer token and 40009 / 40010 for the component
// token (query parameters); v2 takes either token in the access-token header
// and answers 28001003 (invalid) / 28001008 (expired), and its TP-level APIs
// also answer the component token's 40009 / 40010.
var rejectionCodes = [2][2][]int{
	{{40020}, {40009, 40010}},
	{{28001003, 28001008}, {28001003, 28001008, 40009, 40010}},
}

// RejectionCodes lists the codes a downstream answer of family f uses to reject
// the authorizer token (component false) or the component token it was sent.
func RejectionCodes(f Family, component bool) []int {
	i, j := 0, 0
	if f == V2 {
		i = 1
	}
	if component {
		j = 1
	}
	return rejectionCodes[i][j]
}

// classifyCode classifies a platform errno / err_no.
func classifyCode(code int) class { return codeClasses[code] }

// classify tells what err means for the engine. Platform codes go through the
// table; HTTP 5xx, timeouts and broken connections are retryable.
func classify(err error) class {
	if err == nil {
		return classOther
	}
	var pe *PlatformError
	if errors.As(err, &pe) {
		if pe.classified {
			return pe.cls
		}
		if pe.Code != 0 {
			return classifyCode(pe.Code)
		}
		if pe.HTTPStatus >= 500 || pe.HTTPStatus == http.StatusTooManyRequests {
			return classRetryable
		}
		return classOther
	}
	if isTimeout(err) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return classRetryable
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &ne) || errors.As(err, &oe) {
		return classRetryable
	}
	return classOther
}

// unknownOutcome reports a failed call that may have taken effect at the
// platform without its answer reaching us: a timeout, or a connection that
// broke once the request could have been sent. A refused connection (the
// request never left) and any answer, 5xx included, are known outcomes.
func unknownOutcome(err error) bool {
	var pe *PlatformError
	if err == nil || errors.As(err, &pe) {
		return false
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return false
	}
	return classify(err) == classRetryable
}

// isTimeout reports whether err is a timeout of a platform call.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isRetryable reports a transient platform failure.
func isRetryable(err error) bool { return classify(err) == classRetryable }

// isComponentTokenError reports 40009 / 40010.
func isComponentTokenError(err error) bool { return classify(err) == classComponentToken }

// isRefreshTokenDead reports 40021.
func isRefreshTokenDead(err error) bool { return classify(err) == classRefreshTokenDead }

// needsReauthorization reports that the authorization is gone (40004, 40022, 28001016).
func needsReauthorization(err error) bool { return classify(err) == classAuthorizationGone }

// isCodeExpired reports 40018.
func isCodeExpired(err error) bool { return classify(err) == classCodeExpired }

// Kind is what went wrong for a caller of the engine; the Caddy handler maps it to
// an HTTP status.
type Kind int

const (
	KindInternal          Kind = iota // a bug or an unexpected failure
	KindBadAppID                      // the appid is malformed (400)
	KindUnknownAuthorizer             // no record for the appid: authorize it or seed a code (403)
	KindUnauthorized                  // the authorization is gone (403)
	KindUnavailable                   // no usable token right now; try again after RetryAfter (503)
	KindPlatform                      // the platform refused (502)
	KindTimeout                       // the platform did not answer in time (504)
	KindNoTicket                      // no component_ticket has been received yet (503)
	KindFamilyMismatch                // the record belongs to the other token family (403)
	KindBadInput                      // a caller-supplied value is invalid (400)
	KindRateLimited                   // an operator-forced operation over its budget; try again after RetryAfter (429)
	KindBusy                          // one runs at a time and one is running (a rebuild): wait for it (409)
)

func (k Kind) String() string {
	switch k {
	case KindBadAppID:
		return "bad_appid"
	case KindUnknownAuthorizer:
		return "unknown_authorizer"
	case KindUnauthorized:
		return "unauthorized"
	case KindUnavailable:
		return "unavailable"
	case KindPlatform:
		return "platform_error"
	case KindTimeout:
		return "platform_timeout"
	case KindNoTicket:
		return "no_ticket"
	case KindFamilyMismatch:
		return "family_mismatch"
	case KindBadInput:
		return "bad_input"
	case KindRateLimited:
		return "rate_limited"
	case KindBusy:
		return "busy"
	}
	return "internal"
}

// Error is what the engine returns. Its message names the appid and what to do;
// it never holds a secret.
type Error struct {
	Kind       Kind
	AppID      string
	Msg        string        // what happened and what to do
	RetryAfter time.Duration // for KindUnavailable / KindNoTicket: when trying again makes sense
	Err        error         // the cause, often a *PlatformError
}

func (e *Error) Error() string {
	s := e.Msg
	if e.AppID != "" {
		s = "authorizer " + e.AppID + ": " + s
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the Kind of an engine error (KindInternal for others).
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

// platformCode returns the platform code carried by err, or 0.
func platformCode(err error) int {
	var pe *PlatformError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return 0
}
