package tokensource

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// Config configures an Engine. Zero values take the defaults named on each
// field (policy.go says why each default is what it is).
type Config struct {
	// The TP and how to reach the platform. Family "" means v1; Endpoint ""
	// the family's default host.
	ComponentAppID  string
	ComponentSecret Secret
	Family          Family
	Endpoint        string
	// HTTPClient makes the platform calls; nil means one with sane transport
	// timeouts. CallTimeout bounds one platform call; default 10s.
	HTTPClient  *http.Client
	CallTimeout time.Duration

	Store         Store
	EncryptionKey []byte // optional: 32 bytes, records sealed with AES-256-GCM
	// PreviousEncryptionKeys are earlier encryption keys: records sealed with
	// them are still read, and sealed with EncryptionKey when next written
	// (Reseal rewrites them all). Key rotation.
	PreviousEncryptionKeys [][]byte
	Logger                 *zap.Logger
	Now                    func() time.Time
	Observer               Observer // metrics hooks; optional

	// RefreshAhead: refresh an access token this long before it expires (capped at
	// half its lifetime). Default 10m.
	RefreshAhead time.Duration
	// RefreshTokenMargin: renew a refresh token this long before it expires, even
	// for an idle authorizer. Default 72h.
	RefreshTokenMargin time.Duration
	// LockTimeout bounds the wait for the storage lock. Default 15s.
	LockTimeout time.Duration
	// OpTimeout bounds one whole operation (lock wait, refresh with retries,
	// store), and so how long any holder keeps a lock. Default: LockTimeout +
	// Attempts × CallTimeout + 5s (50s with the defaults).
	OpTimeout time.Duration
	// Attempts per platform operation for retryable failures. Default 3.
	Attempts int
	// RetryBase and RetryMax bound the backoff between attempts and, after an
	// operation failed, before the next one for the same authorizer. Defaults 500ms and 30s.
	RetryBase, RetryMax time.Duration
	// AllowUnlocked lets a refresh proceed with the in-process lock only when the
	// storage lock fails (not when it is merely held). Only for a single instance.
	AllowUnlocked bool
	// SyncInterval: a cached record older than this is reloaded from storage in
	// the background on its next use, so pushes handled by other instances are
	// seen. Default 30s.
	SyncInterval time.Duration
	// MaxConcurrentCalls caps platform calls in flight. Default 16.
	MaxConcurrentCalls int
	// RedirectCalls caps the platform calls in flight for exchanges started by
	// the authorization redirect (input from anyone), on slots of their own:
	// they never take one of MaxConcurrentCalls. Default 4.
	RedirectCalls int
	// RedirectExchanges per RedirectWindow bound the exchanges redirects start
	// (a token bucket of RedirectExchanges). Defaults 300 and 1h. Negative: a
	// redirect never starts an exchange (codes come from pushes only).
	RedirectExchanges int
	RedirectWindow    time.Duration
	// PushWindow: a push stamped (TimeStamp) further than this from the clock
	// is refused, and a push already handled is remembered this long. Default 10m.
	PushWindow time.Duration

	// Background work (Run).
	MaintainInterval  time.Duration // how often cached authorizers are checked; default 15s
	SweepInterval     time.Duration // how often every record in storage is checked; default 10m
	ActiveWindow      time.Duration // authorizers used within this are refreshed ahead; default 1h
	RenewRate         float64       // background renewals per second; default 2
	BackgroundWorkers int           // background renewals in flight; default 2
	// RebuildOnEmpty: when storage holds no marker of a finished rebuild (a
	// new deployment, storage lost), one instance of the cluster rebuilds
	// from the platform's authorized-app list at RenewRate (autorebuild.go).
	RebuildOnEmpty bool
}

func (c *Config) setDefaults() error {
	if !ValidAppID(c.ComponentAppID) {
		return fmt.Errorf("component_appid %q: want 1-64 letters, digits, '_' or '-'", c.ComponentAppID)
	}
	if c.Store == nil {
		return errors.New("tokensource: Config.Store is required")
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.CallTimeout, defaultCallTimeout)
	def(&c.RefreshAhead, defaultRefreshAhead)
	def(&c.RefreshTokenMargin, defaultRefreshTokenMargin)
	def(&c.LockTimeout, defaultLockTimeout)
	def(&c.RetryBase, defaultRetryBase)
	def(&c.RetryMax, defaultRetryMax)
	def(&c.SyncInterval, defaultSyncInterval)
	if c.Attempts <= 0 {
		c.Attempts = 3
	}
	if c.MaxConcurrentCalls <= 0 {
		c.MaxConcurrentCalls = 16
	}
	if c.RedirectCalls <= 0 {
		c.RedirectCalls = 4
	}
	if c.RedirectExchanges == 0 {
		c.RedirectExchanges = 300
	}
	def(&c.RedirectWindow, defaultRedirectWindow)
	def(&c.PushWindow, defaultPushWindow)
	def(&c.OpTimeout, defaultOpTimeout(c.LockTimeout, c.Attempts, c.CallTimeout))
	def(&c.MaintainInterval, defaultMaintainInterval)
	def(&c.SweepInterval, defaultSweepInterval)
	def(&c.ActiveWindow, defaultActiveWindow)
	if c.RenewRate <= 0 {
		c.RenewRate = 2
	}
	if c.BackgroundWorkers <= 0 {
		c.BackgroundWorkers = 2
	}
	return nil
}
