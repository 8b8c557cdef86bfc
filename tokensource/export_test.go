package tokensource

import "context"

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

// BackgroundJob is a job the background loop queued: a renewal of AppID's
// token ("" for the component token) in Mode "ahead" or "renew".
type BackgroundJob struct {
	AppID, Mode string

	e *Engine
	j job
}

// Run runs the job as a background worker does (without the rate limit).
func (b BackgroundJob) Run(ctx context.Context) { b.e.runJob(ctx, b.j) }

// BackgroundPass runs one pass of the background loop over what the engine
// holds in memory (maintain), its jitter fixed at u, and with sweep one over
// storage, and returns the jobs they queued.
func (e *Engine) BackgroundPass(ctx context.Context, u float64, sweep bool) []BackgroundJob {
	var jobs []BackgroundJob
	enqueue := func(j job) bool {
		m := "ahead"
		if j.m == renewRefresh {
			m = "renew"
		}
		jobs = append(jobs, BackgroundJob{AppID: j.appid, Mode: m, e: e, j: j})
		return true
	}
	e.maintain(enqueue, func() float64 { return u })
	if sweep {
		e.sweep(ctx, enqueue)
	}
	return jobs
}
