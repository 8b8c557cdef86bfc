package tokensource

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// An app's own token: a mini-app's access_token or an app's client_token,
// which the app fetches with its own secret (no TP involved). Fetching one
// cuts the previous one to a few minutes, and only the newest two stay
// valid, so instances (or environments) that each fetch their own keep
// killing each other's tokens. An AppSource fetches at most once per
// generation across every instance sharing its Store and hands all of them
// the same token (single.go).

// AppSource keeps one app's token of one kind. The Caddy handler needs Token
// and Invalidate; operators Info and Refresh; the owner Run and Close.
type AppSource interface {
	// Token returns the token to send. A token due for renewal but still
	// sendable is returned at once while it is fetched in the background;
	// only a missing, expired or rejected one makes the caller wait. Callers
	// that give up (ctx) do not cancel a fetch.
	Token(ctx context.Context) (Token, error)
	// Invalidate reports that a downstream answer rejected sent. The token is
	// dropped only if it is still the one sent (compare-and-invalidate) and
	// the rejection policy allows (reject.go); the next Token call returns the
	// token to use. It reports whether sent was dropped.
	Invalidate(sent Token) bool
	// Refresh fetches a new token now, unless another instance did while this
	// call waited for the lock. Forced fetches are budgeted per app and kind,
	// across instances (KindRateLimited over it).
	Refresh(ctx context.Context) (AppInfo, error)
	// Info is the token's state (storage first), never its value.
	Info(ctx context.Context) AppInfo
	// Run renews the token ahead of need while it is in use, until ctx ends.
	Run(ctx context.Context)
	// Close waits for operations in flight and makes later ones fail.
	Close() error
}

// AppConfig configures an AppSource. Zero values take the defaults named.
type AppConfig struct {
	// Kind is AppAccessToken or ClientToken.
	Kind string
	// AppID is the app's appid (for a client_token, its client_key); Secret
	// its AppSecret (client_secret).
	AppID  string
	Secret Secret
	// Endpoint is the base URL of the kind's token endpoint: default
	// https://developer.toutiao.com (app_access_token; a mini-game's is
	// https://minigame.zijieapi.com/mgplatform) or https://open.douyin.com
	// (client_token).
	Endpoint    string
	HTTPClient  *http.Client  // nil: one with sane transport timeouts
	CallTimeout time.Duration // one platform call; default 10s

	Store                  Store
	EncryptionKey          []byte   // optional: records sealed with AES-256-GCM
	PreviousEncryptionKeys [][]byte // earlier keys, still read
	Logger                 *zap.Logger
	Now                    func() time.Time
	Observer               Observer // Lookup, PlatformCall, Rejection with the app id

	// RefreshAhead: fetch a new token this long before the current one
	// expires (at most half its life). Default 10m.
	RefreshAhead time.Duration
	// Grace is how long the platform keeps the previous token once a new one
	// is fetched. Default 5m (docs/protocol.md §App credentials).
	Grace time.Duration
	// LockTimeout, OpTimeout, Attempts, RetryBase, RetryMax, AllowUnlocked,
	// SyncInterval: as in Config.
	LockTimeout, OpTimeout time.Duration
	Attempts               int
	RetryBase, RetryMax    time.Duration
	AllowUnlocked          bool
	SyncInterval           time.Duration
	// MaintainInterval: how often Run looks at the token (at most a tenth of
	// its life); default 15s. ActiveWindow: a token used within it is renewed
	// ahead of need; default 1h.
	MaintainInterval, ActiveWindow time.Duration
}

// AppInfo is what may be shown of an app token: everything but its value.
type AppInfo struct {
	AppID      string     `json:"appid"`
	Kind       string     `json:"kind"`
	Endpoint   string     `json:"endpoint"`             // the token endpoint's base URL
	Generation uint64     `json:"generation"`           // fetches stored so far, across instances
	Issued     time.Time  `json:"issued,omitzero"`      // when the current token was fetched
	Expiry     time.Time  `json:"expiry,omitzero"`      // when it expires
	RefreshAt  time.Time  `json:"refresh_at,omitzero"`  // when it is due for renewal
	LastFetch  time.Time  `json:"last_fetch,omitzero"`  // the last successful fetch
	LastError  *LastError `json:"last_error,omitempty"` // the last failed fetch since
	// BackoffUntil: this instance makes no fetch before (after a failure).
	BackoffUntil time.Time `json:"backoff_until,omitzero"`
	// LastUsed: the last request for it on this instance.
	LastUsed time.Time `json:"last_used,omitzero"`
	// Unsaved: the newest token lives only in this instance's memory (storage
	// writes failing).
	Unsaved bool `json:"unsaved,omitempty"`
}

type appSource struct {
	s        *single
	client   *appClient
	cfg      AppConfig
	endpoint string
}

// NewAppSource builds an AppSource. It makes no I/O and starts no goroutine.
func NewAppSource(cfg AppConfig) (AppSource, error) {
	if cfg.Store == nil {
		return nil, errors.New("tokensource: AppConfig.Store is required")
	}
	cl, err := newAppClient(cfg.Kind, cfg.Endpoint, cfg.AppID, cfg.Secret, cfg.HTTPClient, cfg.CallTimeout)
	if err != nil {
		return nil, err
	}
	cd, err := newCodec(cfg.EncryptionKey, cfg.PreviousEncryptionKeys)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.CallTimeout, defaultCallTimeout)
	def(&cfg.RefreshAhead, defaultRefreshAhead)
	def(&cfg.Grace, defaultAppGrace)
	def(&cfg.LockTimeout, defaultLockTimeout)
	def(&cfg.RetryBase, defaultRetryBase)
	def(&cfg.RetryMax, defaultRetryMax)
	def(&cfg.SyncInterval, defaultSyncInterval)
	def(&cfg.MaintainInterval, defaultMaintainInterval)
	def(&cfg.ActiveWindow, defaultActiveWindow)
	if cfg.Attempts <= 0 {
		cfg.Attempts = 3
	}
	def(&cfg.OpTimeout, defaultOpTimeout(cfg.LockTimeout, cfg.Attempts, cfg.CallTimeout))

	b := newBase(cfg.Store, cd, cfg.Logger, cfg.Now, cfg.Observer, 2, limits{
		lockTimeout: cfg.LockTimeout, opTimeout: cfg.OpTimeout, attempts: cfg.Attempts,
		retryBase: cfg.RetryBase, retryMax: cfg.RetryMax, allowUnlocked: cfg.AllowUnlocked,
	})
	key, lock := appKeys(cfg.AppID, cfg.Kind)
	a := &appSource{client: cl, cfg: cfg, endpoint: cl.base.String()}
	a.s = &single{
		base: b, subject: cfg.AppID, what: "app " + cfg.AppID + "'s " + cfg.Kind, sfKey: cfg.Kind,
		key: key, lock: lock, ahead: cfg.RefreshAhead, grace: cfg.Grace, syncInterval: cfg.SyncInterval,
		serveAhead: true,
		fetch: func(context.Context) (func(context.Context) (Secret, time.Duration, error), error) {
			return cl.fetch, nil
		},
		logCall: a.logCall,
		failure: a.failure,
	}
	return a, nil
}

func (a *appSource) Token(ctx context.Context) (Token, error) { return a.s.token(ctx) }

func (a *appSource) Invalidate(sent Token) bool {
	return a.s.report(&a.s.slot, a.cfg.AppID, sent.Value, false)
}

func (a *appSource) Close() error {
	a.s.close()
	return nil
}

func (a *appSource) Refresh(ctx context.Context) (AppInfo, error) {
	s := a.s
	var seen uint64
	cur := s.cur.Load()
	if r, err := s.load(ctx); err == nil {
		cur = s.adopt(r, s.now())
	}
	if cur != nil && cur.rec != nil {
		seen = cur.rec.Generation
		if w := forcedWait(cur.rec, s.now()); w > 0 {
			return AppInfo{}, s.forcedLimited(w) // before queueing for the lock
		}
	}
	if _, err := s.await(ctx, forced.key(s.sfKey), func() (any, error) { return s.obtain(forced, seen) }); err != nil {
		return AppInfo{}, err
	}
	return a.Info(ctx), nil
}

func (a *appSource) Info(ctx context.Context) AppInfo {
	s := a.s
	now := s.now()
	info := AppInfo{AppID: a.cfg.AppID, Kind: a.cfg.Kind, Endpoint: a.endpoint}
	en := s.cur.Load()
	var rec *record
	if en != nil {
		rec = en.rec
		info.Unsaved = en.dirty
		if now.Before(en.retryAt) {
			info.BackoffUntil = en.retryAt
		}
	}
	if r, err := s.load(ctx); err == nil && (rec == nil || r.Generation > rec.Generation || r.Generation == rec.Generation && !info.Unsaved) {
		rec = r
	}
	if rec != nil {
		info.Generation, info.LastFetch = rec.Generation, rec.LastRefresh
		if rec.LastError != nil {
			info.LastError = rec.LastError
		}
		if rec.AccessToken != "" {
			info.Issued, info.Expiry = rec.AccessIssued, rec.AccessExpiry
			info.RefreshAt, _ = margins(rec.AccessIssued, rec.AccessExpiry, a.cfg.RefreshAhead)
		}
	}
	if u := s.used.Load(); u > 0 {
		info.LastUsed = time.Unix(u, 0)
	}
	return info
}

func (a *appSource) Run(ctx context.Context) {
	s := a.s
	t := time.NewTimer(maintainEvery(s.cur.Load(), a.cfg.MaintainInterval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := s.now()
		en := s.cur.Load()
		if s.queuesAhead(en, now, time.Unix(s.used.Load(), 0), a.cfg.ActiveWindow, rand.Float64()) {
			if _, err := s.await(ctx, ahead.key(s.sfKey), func() (any, error) { return s.obtain(ahead, 0) }); err != nil && ctx.Err() == nil {
				s.log.Debug("renewing "+s.what+" ahead did not complete", zapErr(err)) // failed() logged why
			}
		}
		s.writeBack(ctx)
		t.Reset(maintainEvery(s.cur.Load(), a.cfg.MaintainInterval))
	}
}

// logCall logs and observes one fetch attempt that started at t0 (real time).
func (a *appSource) logCall(t0 time.Time, err error) {
	took := time.Since(t0)
	result := callResult(err)
	a.s.obs.PlatformCall(a.cfg.Kind, a.cfg.AppID, CauseLive, result, took)
	fields := []zap.Field{zap.String("op", a.cfg.Kind), zapApp(a.cfg.AppID), zap.String("result", result), zap.Duration("duration", took)}
	var pe *PlatformError
	if errors.As(err, &pe) {
		fields = append(fields, zap.Int("code", pe.Code), zap.String("log_id", pe.LogID))
	}
	if err != nil {
		a.s.log.Warn("platform call failed", append(fields, zapErr(err))...)
		return
	}
	a.s.log.Info("platform call", fields...)
}

// failure is what callers are told once a failed fetch left no token to send.
func (a *appSource) failure(cause error, retryAfter time.Duration) error {
	var ee *Error
	if errors.As(cause, &ee) {
		return cause
	}
	retryAfter = max(retryAfter, time.Second)
	what := a.s.what
	switch classify(cause) {
	case classCredentialsRefused:
		return &Error{Kind: KindPlatform, RetryAfter: retryAfter, Err: cause,
			Msg: fmt.Sprintf("%s: the platform refused the app's credentials (code %d): check its secret, and that %s is the appid (client_key) it belongs to", what, platformCode(cause), a.cfg.AppID)}
	case classRateLimited:
		return &Error{Kind: KindUnavailable, RetryAfter: retryAfter, Err: cause,
			Msg: what + ": the platform refuses to issue more tokens for now (rate limit: another system probably fetches this app's token too), and the current one has expired"}
	case classRetryable:
		if isTimeout(cause) {
			return &Error{Kind: KindTimeout, RetryAfter: retryAfter, Err: cause, Msg: what + ": the platform did not answer in time and the current token has expired"}
		}
		return &Error{Kind: KindUnavailable, RetryAfter: retryAfter, Err: cause, Msg: what + ": the platform is failing and the current token has expired"}
	}
	return &Error{Kind: KindPlatform, RetryAfter: retryAfter, Err: cause, Msg: what + ": the platform refused to issue a token"}
}
