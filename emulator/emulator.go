// Package emulator is a faithful, deterministic stand-in for the Douyin /
// ByteDance open platform as seen by one third-party mini-app application (TP):
// the v1 and v2 token endpoints (component token, code exchange, refresh,
// retrieve code, authorized-app list), every other API path of either family
// (it validates the token of the kind the path takes and answers with the
// token's owner, so any SDK method can be tried), and the push sender
// (encrypted component tickets and authorization events).
//
// It exists so tptoken's own tests, the README demo and users' legacy apps can
// run without the real platform, and it reproduces the rules that make token
// handling fragile: a refresh token is used at most once and a refresh kills the
// old access token with it; a new exchange kills that family's previous chain;
// codes are single-use; v1 and v2 tokens never mix; a v2 component-token fetch
// supersedes the previous token after a grace period. Faults (latency, 40045,
// 5xx, responses dropped after the call took effect, outages) can be injected
// per operation.
//
// The emulator is an http.Handler (ServeHTTP) with a JSON control surface under
// /_emulator/, and the Caddy module http.handlers.tptoken_emulator (caddy.go).
// It depends on tokensource only for Secret and Family, and on tokensource/push
// to seal its pushes, never on the engine, so it can judge the engine
// independently. Time comes from Config.Now;
// token values derive from Config.Seed and a counter, so a test that makes the
// same calls gets the same values.
package emulator

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/tptoken/caddy-tptoken/tokensource"
	"github.com/tptoken/caddy-tptoken/tokensource/push"
)

// Defaults of Config.
const (
	DefaultAccessTokenTTL    = 2 * time.Hour
	DefaultRefreshTokenTTL   = 30 * 24 * time.Hour
	DefaultComponentTokenTTL = 2 * time.Hour
	DefaultCodeTTL           = time.Hour
	DefaultTicketTTL         = 3 * time.Hour
	DefaultV1ReissueWindow   = 30 * time.Minute
	DefaultV2Grace           = 5 * time.Minute
	DefaultTicketInterval    = 10 * time.Minute
	DefaultPushRetryBackoff  = time.Second
	DefaultPushTimeout       = 10 * time.Second
)

// pushRetries is how often the platform retries a push that was not answered
// with "success" (docs/protocol.md §Pushes).
const pushRetries = 3

// Config configures an Emulator. Zero durations take the defaults above.
type Config struct {
	// The TP's credentials. ComponentAppID and ComponentAppSecret are required.
	// MessageToken and EncodingAESKey are needed only to send pushes (PushURL).
	ComponentAppID     string
	ComponentAppSecret string
	MessageToken       string
	EncodingAESKey     string

	AccessTokenTTL    time.Duration // authorizer access token (expires_in), default 2h
	RefreshTokenTTL   time.Duration // authorizer refresh token (refresh_expires_in), default 30 days
	ComponentTokenTTL time.Duration // component access token, default 2h
	CodeTTL           time.Duration // authorization code, default 1h
	TicketTTL         time.Duration // component_ticket, default 3h
	V1ReissueWindow   time.Duration // v1: a new component token is issued once less than this remains, default 30m
	V2Grace           time.Duration // v2: a superseded component token lives this long, default 5m

	// PushURL is the TP's 授权事件接收 URL; "" sends no pushes (tickets are still
	// minted and readable with Ticket).
	PushURL string
	// TicketInterval is the ticket push period of Run, default 10m (real time).
	TicketInterval time.Duration
	// PushRetryBackoff is the first wait before retrying a failed push; it
	// doubles for each of the 3 retries. Default 1s (real time).
	PushRetryBackoff time.Duration
	// HTTPClient sends pushes; default: a client with a 10 s timeout.
	HTTPClient *http.Client
	// Now is the emulator's clock for every lifetime; default time.Now.
	Now func() time.Time
	// Seed makes token values differ between emulators; same seed, same calls, same values.
	Seed int64
	// Logger gets one line per call and push, with fingerprints only; default: no logging.
	Logger *zap.Logger
	// Authorize lists authorizer appids authorized from the start. Run sends
	// their AUTHORIZED pushes after its first successful ticket push.
	Authorize []string
	// UnauthorizedDownstream is the code a downstream API answers for a token
	// whose authorization was revoked (Unauthorize), in the family's field
	// (v1 errno, v2 err_no): for example 40022, what the platform's TP APIs
	// answer for an app no longer authorized. 0 answers as for any dead token
	// (v1 40020, v2 28001003). SetUnauthorizedDownstream changes it.
	UnauthorizedDownstream int

	// Apps are the apps whose own tokens (app_access_token, client_token) the
	// emulator issues (apptoken.go); AddApp adds more.
	Apps        []AppCred
	AppTokenTTL time.Duration // app tokens' expires_in, default 2h
	AppGrace    time.Duration // a fetch cuts the previous app token to this, default 5m
	// ClientTokenRate: fetches of one client_key's client_token per 5
	// minutes; more are refused with 10020. Default 500; negative: no limit.
	ClientTokenRate int
}

// Lifetimes are the durations that can change at runtime. They apply to tokens,
// codes and tickets issued afterwards (V1ReissueWindow and V2Grace apply to the
// next component-token fetch). In SetLifetimes a zero field keeps its value.
type Lifetimes struct {
	AccessTokenTTL    time.Duration
	RefreshTokenTTL   time.Duration
	ComponentTokenTTL time.Duration
	CodeTTL           time.Duration
	TicketTTL         time.Duration
	V1ReissueWindow   time.Duration
	V2Grace           time.Duration
	AppTokenTTL       time.Duration
	AppGrace          time.Duration
}

func (l *Lifetimes) merge(o Lifetimes) {
	for _, p := range []struct {
		dst *time.Duration
		src time.Duration
	}{
		{&l.AccessTokenTTL, o.AccessTokenTTL}, {&l.RefreshTokenTTL, o.RefreshTokenTTL},
		{&l.ComponentTokenTTL, o.ComponentTokenTTL}, {&l.CodeTTL, o.CodeTTL}, {&l.TicketTTL, o.TicketTTL},
		{&l.V1ReissueWindow, o.V1ReissueWindow}, {&l.V2Grace, o.V2Grace},
		{&l.AppTokenTTL, o.AppTokenTTL}, {&l.AppGrace, o.AppGrace},
	} {
		if p.src > 0 {
			*p.dst = p.src
		}
	}
}

// tokenKind is what a token value is.
type tokenKind int

const (
	kindComponent tokenKind = iota + 1
	kindAccess
	kindRefresh
	kindAppAccess // an app's access_token (apptoken.go)
	kindClient    // an app's client_token
)

// token is one issued token. A token is usable while !dead and now < expiry.
type token struct {
	kind   tokenKind
	family tokensource.Family
	appid  string // access and refresh tokens: the authorizer
	issued time.Time
	expiry time.Time
	dead   bool   // rotated, revoked, superseded beyond the grace, or unauthorized
	why    string // why it died (for logs and messages; never the value)
	cut    bool   // app tokens: a newer fetch cut its life to the grace
}

func (t *token) usable(now time.Time) bool { return !t.dead && now.Before(t.expiry) }

// chain is an authorizer's current token pair in one family.
type chain struct{ access, refresh string }

type authorizer struct {
	appid      string
	seq        int // order of first authorization, for the app list
	authorized bool
	authTime   time.Time
	chains     map[tokensource.Family]*chain
}

type code struct {
	appid  string
	expiry time.Time
	used   bool
	dead   bool
}

type ticket struct {
	value  string
	expiry time.Time
}

// Emulator emulates the platform for one TP. All methods are safe for
// concurrent use. Create it with New and end it with Close.
type Emulator struct {
	appid  string
	secret string
	crypto *push.Crypto // nil without MessageToken / EncodingAESKey
	client *http.Client
	now    func() time.Time
	seed   int64
	log    *zap.Logger

	ctx    context.Context // ends at Close; parent of background pushes
	cancel context.CancelFunc
	wg     sync.WaitGroup // background pushes

	mu             sync.Mutex
	closed         bool
	running        bool
	life           Lifetimes
	pushURL        string
	ticketInterval time.Duration
	retryBackoff   time.Duration
	startAuthorize []string // Config.Authorize not yet pushed by Run
	counter        uint64
	logSeq         uint64
	tokens         map[string]*token
	compLatest     map[tokensource.Family]string
	compPrevious   map[tokensource.Family]string // v2 only: the one still in its grace
	auths          map[string]*authorizer
	authSeq        int
	codes          map[string]*code
	preAuth        map[string]*preAuth // pre_auth_codes (authlink.go)
	tickets        []ticket
	issued         []string
	faults         map[string]Faults
	stats          statsState
	recent         []APICall // the last maxRecentCalls API calls
	randCounter    uint64
	goneCode       int // Config.UnauthorizedDownstream

	apps            map[string]*appState // apptoken.go
	clientTokenRate int
}

// New validates cfg and returns an emulator with no authorizers (other than
// cfg.Authorize), no tokens and no ticket yet.
func New(cfg Config) (*Emulator, error) {
	if cfg.ComponentAppID == "" || cfg.ComponentAppSecret == "" {
		return nil, errors.New("emulator: component_appid and component_appsecret are required")
	}
	if !tokensource.ValidAppID(cfg.ComponentAppID) {
		return nil, fmt.Errorf("emulator: invalid component_appid %q", cfg.ComponentAppID)
	}
	for _, d := range []time.Duration{cfg.AccessTokenTTL, cfg.RefreshTokenTTL, cfg.ComponentTokenTTL, cfg.CodeTTL,
		cfg.TicketTTL, cfg.V1ReissueWindow, cfg.V2Grace, cfg.TicketInterval, cfg.PushRetryBackoff, cfg.AppTokenTTL, cfg.AppGrace} {
		if d < 0 {
			return nil, errors.New("emulator: durations must not be negative")
		}
	}
	e := &Emulator{
		appid:        cfg.ComponentAppID,
		secret:       cfg.ComponentAppSecret,
		client:       cfg.HTTPClient,
		now:          cfg.Now,
		seed:         cfg.Seed,
		log:          cfg.Logger,
		tokens:       map[string]*token{},
		compLatest:   map[tokensource.Family]string{},
		compPrevious: map[tokensource.Family]string{},
		auths:        map[string]*authorizer{},
		codes:        map[string]*code{},
		faults:       map[string]Faults{},
		stats:        newStatsState(),
		goneCode:     cfg.UnauthorizedDownstream,
		apps:         map[string]*appState{},
	}
	e.clientTokenRate = cfg.ClientTokenRate
	if e.clientTokenRate == 0 {
		e.clientTokenRate = DefaultClientTokenRate
	}
	if cfg.MessageToken != "" || cfg.EncodingAESKey != "" {
		pc, err := push.NewCrypto(cfg.MessageToken, cfg.EncodingAESKey, cfg.ComponentAppID)
		if err != nil {
			return nil, fmt.Errorf("emulator: %w", err)
		}
		pc.Rand = &detRand{e: e}
		e.crypto = pc
	}
	if cfg.PushURL != "" {
		if err := e.checkPushURL(cfg.PushURL); err != nil {
			return nil, err
		}
	}
	if e.client == nil {
		e.client = &http.Client{Timeout: DefaultPushTimeout}
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.log == nil {
		e.log = zap.NewNop()
	}
	e.life = Lifetimes{
		AccessTokenTTL: DefaultAccessTokenTTL, RefreshTokenTTL: DefaultRefreshTokenTTL,
		ComponentTokenTTL: DefaultComponentTokenTTL, CodeTTL: DefaultCodeTTL, TicketTTL: DefaultTicketTTL,
		V1ReissueWindow: DefaultV1ReissueWindow, V2Grace: DefaultV2Grace,
		AppTokenTTL: DefaultAppTokenTTL, AppGrace: DefaultAppGrace,
	}
	e.life.merge(Lifetimes{
		AccessTokenTTL: cfg.AccessTokenTTL, RefreshTokenTTL: cfg.RefreshTokenTTL,
		ComponentTokenTTL: cfg.ComponentTokenTTL, CodeTTL: cfg.CodeTTL, TicketTTL: cfg.TicketTTL,
		V1ReissueWindow: cfg.V1ReissueWindow, V2Grace: cfg.V2Grace,
		AppTokenTTL: cfg.AppTokenTTL, AppGrace: cfg.AppGrace,
	})
	e.pushURL = cfg.PushURL
	e.ticketInterval = orDefault(cfg.TicketInterval, DefaultTicketInterval)
	e.retryBackoff = orDefault(cfg.PushRetryBackoff, DefaultPushRetryBackoff)
	for _, s := range []string{cfg.ComponentAppSecret, cfg.MessageToken, cfg.EncodingAESKey} {
		if s != "" {
			e.issued = append(e.issued, s)
		}
	}
	for _, a := range cfg.Apps {
		if !tokensource.ValidAppID(a.AppID) || a.Secret == "" {
			return nil, fmt.Errorf("emulator: app %q: want a valid appid and a secret", a.AppID)
		}
		e.addAppLocked(a.AppID, a.Secret)
	}
	now := e.now()
	for _, a := range cfg.Authorize {
		if !tokensource.ValidAppID(a) {
			return nil, fmt.Errorf("emulator: invalid authorizer appid %q", a)
		}
		e.authorizeLocked(a, now)
		e.startAuthorize = append(e.startAuthorize, a)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	return e, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func (e *Emulator) checkPushURL(u string) error {
	if e.crypto == nil {
		return errors.New("emulator: push_url needs message_token and encoding_aes_key")
	}
	pu, err := url.Parse(u)
	if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
		return fmt.Errorf("emulator: push_url %q is not an http(s) URL", u)
	}
	return nil
}

// Close stops background pushes (retrieve notifications, retries) and waits for
// them. The emulator still answers HTTP calls afterwards but sends no pushes.
func (e *Emulator) Close() error {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	e.cancel()
	e.wg.Wait()
	return nil
}

// SetUnauthorizedDownstream sets Config.UnauthorizedDownstream: the code
// downstream APIs answer for a token of a revoked authorization (0: as for any
// dead token).
func (e *Emulator) SetUnauthorizedDownstream(code int) {
	e.mu.Lock()
	e.goneCode = code
	e.mu.Unlock()
}

// ComponentAppID is the TP this emulator serves.
func (e *Emulator) ComponentAppID() string { return e.appid }

// SetLifetimes changes lifetimes at runtime; zero fields keep their value.
func (e *Emulator) SetLifetimes(l Lifetimes) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.life.merge(l)
}

// Lifetimes returns the current lifetimes.
func (e *Emulator) Lifetimes() Lifetimes {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.life
}

// SetPushURL changes where pushes go ("" stops pushing).
func (e *Emulator) SetPushURL(u string) error {
	if u != "" {
		if err := e.checkPushURL(u); err != nil {
			return err
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.pushURL = u
	return nil
}

// SetTicketInterval changes the ticket push period of Run from its next wait on.
func (e *Emulator) SetTicketInterval(d time.Duration) {
	if d <= 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ticketInterval = d
}

// mintLocked returns a new deterministic value: SHA-256 of the seed, the TP, the
// kind and a counter. v1 values are 64 hex digits; v2 ones carry the prefixes
// of the platform's examples (clt., isvact., isvrft.).
func (e *Emulator) mintLocked(kind string) string {
	e.counter++
	sum := sha256.Sum256(fmt.Appendf(nil, "%d|%s|%s|%d", e.seed, e.appid, kind, e.counter))
	h := hex.EncodeToString(sum[:])
	var v string
	switch kind {
	case "component.v2":
		v = "clt." + h
	case "access.v2":
		v = "isvact." + h
	case "refresh.v2":
		v = "isvrft." + h
	case OpClientToken:
		v = "clt." + h
	case OpAppAccessToken:
		v = "0801" + h
	case "ticket":
		v = h[:32]
	case "code":
		v = h[:40]
	default: // v1 tokens: long hex
		v = h
	}
	e.issued = append(e.issued, v)
	return v
}

func (e *Emulator) newTokenLocked(kind tokenKind, f tokensource.Family, appid string, now time.Time, ttl time.Duration) string {
	name := map[tokenKind]string{kindComponent: "component", kindAccess: "access", kindRefresh: "refresh"}[kind] + "." + string(f)
	v := e.mintLocked(name)
	e.tokens[v] = &token{kind: kind, family: f, appid: appid, issued: now, expiry: now.Add(ttl)}
	return v
}

func (e *Emulator) killLocked(v, why string) {
	if t := e.tokens[v]; t != nil && !t.dead {
		t.dead, t.why = true, why
	}
}

// authorizeLocked marks appid authorized (keeping its chains).
func (e *Emulator) authorizeLocked(appid string, now time.Time) *authorizer {
	a := e.auths[appid]
	if a == nil {
		e.authSeq++
		a = &authorizer{appid: appid, seq: e.authSeq, chains: map[tokensource.Family]*chain{}}
		e.auths[appid] = a
	}
	if !a.authorized {
		a.authorized, a.authTime = true, now
	}
	return a
}

func (e *Emulator) newCodeLocked(appid string, now time.Time) (string, time.Duration) {
	v := e.mintLocked("code")
	e.codes[v] = &code{appid: appid, expiry: now.Add(e.life.CodeTTL)}
	return v, e.life.CodeTTL
}

// newTicketLocked mints a ticket valid for TicketTTL and forgets expired ones.
func (e *Emulator) newTicketLocked(now time.Time) string {
	v := e.mintLocked("ticket")
	kept := e.tickets[:0]
	for _, t := range e.tickets {
		if now.Before(t.expiry) {
			kept = append(kept, t)
		}
	}
	e.tickets = append(kept, ticket{value: v, expiry: now.Add(e.life.TicketTTL)})
	return v
}

func (e *Emulator) ticketValidLocked(v string, now time.Time) bool {
	for _, t := range e.tickets {
		if subtle.ConstantTimeCompare([]byte(t.value), []byte(v)) == 1 && now.Before(t.expiry) {
			return true
		}
	}
	return false
}

// Ticket returns the latest component_ticket. If no valid ticket exists yet it
// mints one without pushing it, so tests need no push receiver.
func (e *Emulator) Ticket() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	if n := len(e.tickets); n > 0 && now.Before(e.tickets[n-1].expiry) {
		return e.tickets[n-1].value
	}
	return e.newTicketLocked(now)
}

// RevokeAccessToken makes the current access token of appid in family f stop
// working (downstream answers 40020 / 28001003) while its refresh token stays
// valid, as when the platform drops a token. It is a no-op without a chain.
func (e *Emulator) RevokeAccessToken(appid string, f tokensource.Family) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	a := e.auths[appid]
	if a == nil || a.chains[f] == nil {
		return false
	}
	e.killLocked(a.chains[f].access, "revoked")
	e.log.Info("access token revoked", zap.String("appid", appid), zap.String("family", string(f)))
	return true
}

// ExpireAccessToken makes the current access token of appid in family f expire
// now (downstream answers 40020 / 28001008), leaving its refresh token valid.
func (e *Emulator) ExpireAccessToken(appid string, f tokensource.Family) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	a := e.auths[appid]
	if a == nil || a.chains[f] == nil {
		return false
	}
	if t := e.tokens[a.chains[f].access]; t != nil {
		t.expiry = e.now()
	}
	return true
}

// IssuedSecrets returns every token, refresh token, ticket and code ever
// issued, plus the configured secret, message token and key: a log-leak test
// greps its logs for each of them.
func (e *Emulator) IssuedSecrets() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.issued...)
}

// Authorizers returns the known authorizer appids and whether each is
// authorized now, in authorization order.
func (e *Emulator) Authorizers() map[string]bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	m := make(map[string]bool, len(e.auths))
	for id, a := range e.auths {
		m[id] = a.authorized
	}
	return m
}

// authorizedListLocked is the authorized apps in authorization order.
func (e *Emulator) authorizedListLocked() []*authorizer {
	var l []*authorizer
	for _, a := range e.auths {
		if a.authorized {
			l = append(l, a)
		}
	}
	sort.Slice(l, func(i, j int) bool { return l[i].seq < l[j].seq })
	return l
}

// logIDLocked is a v2 log_id: the emulator's time plus a sequence number.
func (e *Emulator) logIDLocked(now time.Time) string {
	e.logSeq++
	return now.UTC().Format("20060102150405") + fmt.Sprintf("%06d", e.logSeq)
}

// detRand is the deterministic random stream of push sealing.
type detRand struct{ e *Emulator }

func (r *detRand) Read(b []byte) (int, error) {
	r.e.mu.Lock()
	r.e.randCounter++
	n := r.e.randCounter
	r.e.mu.Unlock()
	for i := 0; i < len(b); i += sha256.Size {
		var buf [8]byte
		binary.BigEndian.PutUint64(buf[:], n)
		sum := sha256.Sum256(fmt.Appendf(nil, "%d|%s|push-random|%x|%d", r.e.seed, r.e.appid, buf, i))
		copy(b[i:], sum[:])
	}
	return len(b), nil
}

// nonceLocked is a numeric nonce like the platform's.
func (e *Emulator) nonceLocked() string {
	e.counter++
	sum := sha256.Sum256(fmt.Appendf(nil, "%d|%s|nonce|%d", e.seed, e.appid, e.counter))
	return strconv.FormatUint(uint64(binary.BigEndian.Uint32(sum[:4])), 10)
}

// fp is a secret's fingerprint for logs.
func fp(v string) zap.Field { return zap.String("fp", tokensource.Secret(v).Fingerprint()) }
