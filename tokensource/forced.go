package tokensource

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Operator-forced refreshes and recoveries each spend a single-use refresh
// token (or retrieve a new code): a script looping over `caddy tptoken
// refresh` must not turn into a platform call per iteration. Each authorizer
// has a budget of forcedMax forced operations per forcedWindow, kept in its
// record, so it holds cluster-wide at no extra storage cost: the check runs
// under the authorizer's lock on the record just reloaded, and the record is
// written anyway by the operation it allows.
const (
	forcedMax    = 3
	forcedWindow = 10 * time.Minute

	// Recoveries of appids with no record (Recover with allowNew) have no
	// record to keep a budget in: they are limited per engine instead.
	newAppRecoveryBurst = 5
	newAppRecoveryEvery = 10 * time.Second
)

// forcedWait is how long until rec allows another forced operation (0: now).
func forcedWait(rec *Record, now time.Time) time.Duration {
	n := 0
	var oldest time.Time
	for _, t := range rec.ForcedAt {
		if now.Sub(t) < forcedWindow && !t.After(now) {
			n++
			if oldest.IsZero() || t.Before(oldest) {
				oldest = t
			}
		}
	}
	if n < forcedMax {
		return 0
	}
	return max(oldest.Add(forcedWindow).Sub(now), time.Second)
}

// withForced is a copy of r that records a forced operation at now (and
// forgets those outside the window).
func (r *Record) withForced(now time.Time) *Record {
	c := r.clone()
	c.ForcedAt = c.ForcedAt[:0]
	for _, t := range r.ForcedAt {
		if now.Sub(t) < forcedWindow && !t.After(now) {
			c.ForcedAt = append(c.ForcedAt, t)
		}
	}
	c.ForcedAt = append(c.ForcedAt, now)
	return c
}

func rateLimited(appid string, wait time.Duration) error {
	return &Error{Kind: KindRateLimited, AppID: appid, RetryAfter: wait,
		Msg: fmt.Sprintf("at most %d forced refreshes or recoveries per authorizer in %s (counted across all instances); try again in %s",
			forcedMax, forcedWindow, wait.Round(time.Second))}
}

// WithoutAppID is err with appid replaced by its fingerprint in its text; an
// *Error keeps its Kind and RetryAfter. For errors about an appid that is not
// confirmed (see opTag).
func WithoutAppID(err error, appid string) error {
	if err == nil || appid == "" || !strings.Contains(err.Error(), appid) {
		return err
	}
	msg := strings.ReplaceAll(err.Error(), appid, "[appid fingerprint "+Secret(appid).Fingerprint()+"]")
	var e *Error
	if errors.As(err, &e) {
		return &Error{Kind: e.Kind, Msg: msg, RetryAfter: e.RetryAfter}
	}
	return errors.New(msg)
}
