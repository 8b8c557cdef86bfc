package tokensource

import (
	"errors"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
)

// Causes of platform calls and recoveries, reported to the Observer so that a
// migration can be told apart from live traffic.
const (
	CauseLive    = "live"    // requests, background renewals, pushes, operator actions
	CauseImport  = "import"  // rows of an import of legacy refresh tokens
	CauseRebuild = "rebuild" // authorizers a rebuild works on (Rebuild, rebuild on an empty store)
)

// opTag marks the operations on one appid while an import row or an operator
// action runs: their platform calls and recoveries are reported with its
// cause, and, while the appid is unconfirmed, without the appid.
//
// An appid given by an operator or an import file is unconfirmed until storage
// holds a record for it or the platform answers a call about it successfully:
// with an import file's columns swapped, the "appid" is a refresh token that
// happens to match the appid pattern, and it must reach no log line, metric
// label or stored key. Lock names hold it only while the call runs.
type opTag struct {
	cause       string
	unconfirmed atomic.Bool
}

// tagApp tags appid's operations until the returned func is called.
func (e *Engine) tagApp(appid, cause string, unconfirmed bool) (*opTag, func()) {
	t := &opTag{cause: cause}
	t.unconfirmed.Store(unconfirmed)
	e.tags.Store(appid, t)
	return t, func() { e.tags.CompareAndDelete(appid, t) }
}

func (e *Engine) tagOf(appid string) *opTag {
	if appid == "" {
		return nil
	}
	if v, ok := e.tags.Load(appid); ok {
		return v.(*opTag)
	}
	return nil
}

// causeOf is the cause of an operation on appid.
func (e *Engine) causeOf(appid string) string {
	if t := e.tagOf(appid); t != nil {
		return t.cause
	}
	return CauseLive
}

// shownAppID is appid as it may appear in a metric label: "" while unconfirmed.
func (e *Engine) shownAppID(appid string) string {
	if t := e.tagOf(appid); t != nil && t.unconfirmed.Load() {
		return ""
	}
	return appid
}

// appField is the log field naming appid: the appid, or while it is
// unconfirmed a fingerprint of it.
func (e *Engine) appField(appid string) zap.Field {
	if appid != "" && e.shownAppID(appid) == "" {
		return zap.String("appid_fingerprint", Secret(appid).Fingerprint())
	}
	return zapApp(appid)
}

// lockField is the log field naming a storage lock, without an unconfirmed appid.
func (e *Engine) lockField(name string) zap.Field {
	if id, ok := strings.CutPrefix(name, e.keys.lockPrefix+".authorizer."); ok && e.shownAppID(id) == "" {
		return zapLock(e.keys.lockPrefix + ".authorizer.[appid " + Secret(id).Fingerprint() + "]")
	}
	return zapLock(name)
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
