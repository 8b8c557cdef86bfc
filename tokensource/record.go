package tokensource

import (
	"context"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"
)

// State of an authorizer record.
type State string

const (
	// StateActive: the record holds a refresh token the engine believes valid.
	StateActive State = "active"
	// StateUnauthorized: the authorization is gone (UNAUTHORIZED push, 40004,
	// 40022, 28001016). No platform call is made for it until a new code arrives.
	StateUnauthorized State = "unauthorized"
	// StateNeedsRecovery: the refresh token was lost or rejected (40021) and the
	// retrieve-code recovery has not succeeded yet.
	StateNeedsRecovery State = "needs_recovery"
)

// Permission is one entry of authorize_permission.
type Permission struct {
	ID          int    `json:"id"`
	Category    string `json:"category,omitempty"`
	Description string `json:"description,omitempty"`
}

// LastError is the last failure recorded for an authorizer. It never holds a secret.
type LastError struct {
	Op      string    `json:"op"`
	Code    int       `json:"code,omitempty"`
	Message string    `json:"message"`
	LogID   string    `json:"log_id,omitempty"`
	At      time.Time `json:"at"`
}

// record is the durable state of one authorizer. Token fields are Secrets, so
// printing or marshalling a record redacts them; the storage encoding is diskRecord.
type record struct {
	AppID         string
	Family        Family
	State         State
	AccessToken   Secret
	AccessIssued  time.Time
	AccessExpiry  time.Time
	RefreshToken  Secret
	RefreshExpiry time.Time
	Permissions   []Permission
	LastError     *LastError
	LastRefresh   time.Time // last successful refresh or exchange
	AuthorizedAt  time.Time // last successful exchange of a code
	UpdatedAt     time.Time
	Generation    uint64 // bumped on every stored change; orders writes across instances
	LastCode      string // fingerprint of the last code exchanged: pushes are retried
	LastEventAt   time.Time
	ForcedAt      []time.Time // operator-forced refreshes and recoveries within forcedWindow (cluster-wide budget)
	// Chain names the token chain: set by each exchange, kept by refreshes.
	// Generations order the records of one chain only (writeback.go).
	Chain string
}

// diskRecord is the stored JSON of a record. Only encodeRecord/decodeRecord use it.
type diskRecord struct {
	V             int          `json:"v"`
	AppID         string       `json:"appid"`
	Family        Family       `json:"family"`
	State         State        `json:"state"`
	AccessToken   string       `json:"access_token,omitempty"`
	AccessIssued  time.Time    `json:"access_issued,omitzero"`
	AccessExpiry  time.Time    `json:"access_expiry,omitzero"`
	RefreshToken  string       `json:"refresh_token,omitempty"`
	RefreshExpiry time.Time    `json:"refresh_expiry,omitzero"`
	Permissions   []Permission `json:"permissions,omitempty"`
	LastError     *LastError   `json:"last_error,omitempty"`
	LastRefresh   time.Time    `json:"last_refresh,omitzero"`
	AuthorizedAt  time.Time    `json:"authorized_at,omitzero"`
	UpdatedAt     time.Time    `json:"updated_at"`
	Generation    uint64       `json:"generation"`
	LastCode      string       `json:"last_code,omitempty"`
	LastEventAt   time.Time    `json:"last_event_at,omitzero"`
	ForcedAt      []time.Time  `json:"forced_at,omitempty"`
	Chain         string       `json:"chain,omitempty"`
}

func (r *record) disk() diskRecord {
	return diskRecord{
		V: 1, AppID: r.AppID, Family: r.Family, State: r.State,
		AccessToken: r.AccessToken.Reveal(), AccessIssued: r.AccessIssued, AccessExpiry: r.AccessExpiry,
		RefreshToken: r.RefreshToken.Reveal(), RefreshExpiry: r.RefreshExpiry,
		Permissions: r.Permissions, LastError: r.LastError, LastRefresh: r.LastRefresh,
		AuthorizedAt: r.AuthorizedAt, UpdatedAt: r.UpdatedAt, Generation: r.Generation,
		LastCode: r.LastCode, LastEventAt: r.LastEventAt, ForcedAt: r.ForcedAt, Chain: r.Chain,
	}
}

func (d *diskRecord) record() *record {
	return &record{
		AppID: d.AppID, Family: d.Family, State: d.State,
		AccessToken: Secret(d.AccessToken), AccessIssued: d.AccessIssued, AccessExpiry: d.AccessExpiry,
		RefreshToken: Secret(d.RefreshToken), RefreshExpiry: d.RefreshExpiry,
		Permissions: d.Permissions, LastError: d.LastError, LastRefresh: d.LastRefresh,
		AuthorizedAt: d.AuthorizedAt, UpdatedAt: d.UpdatedAt, Generation: d.Generation,
		LastCode: d.LastCode, LastEventAt: d.LastEventAt, ForcedAt: d.ForcedAt, Chain: d.Chain,
	}
}

// clone returns a copy safe to modify.
func (r *record) clone() *record {
	c := *r
	c.Permissions = append([]Permission(nil), r.Permissions...)
	c.ForcedAt = append([]time.Time(nil), r.ForcedAt...)
	if r.LastError != nil {
		le := *r.LastError
		c.LastError = &le
	}
	return &c
}

// ticketRecord is the stored component_ticket (diskTicket on disk).
type diskTicket struct {
	Ticket     string    `json:"ticket"`
	CreateTime time.Time `json:"create_time,omitzero"` // as pushed (CreateTime)
	ReceivedAt time.Time `json:"received_at"`
}

// diskCode remembers which authorizer an exchanged code belonged to, so the
// authorization redirect (which names no appid) can be answered after the push
// already used the code. Kept for codeMemory.
type diskCode struct {
	AppID string    `json:"appid"`
	At    time.Time `json:"at"`
}

// Info is what may be shown of an authorizer: everything but token values.
type Info struct {
	AppID         string       `json:"appid"`
	Family        Family       `json:"family"`
	State         State        `json:"state"`
	AccessExpiry  time.Time    `json:"access_expiry,omitzero"`
	RefreshExpiry time.Time    `json:"refresh_expiry,omitzero"`
	LastRefresh   time.Time    `json:"last_refresh,omitzero"`
	AuthorizedAt  time.Time    `json:"authorized_at,omitzero"`
	UpdatedAt     time.Time    `json:"updated_at,omitzero"`
	Generation    uint64       `json:"generation"`
	Permissions   []Permission `json:"permissions,omitempty"`
	LastError     *LastError   `json:"last_error,omitempty"`
	Unsaved       bool         `json:"unsaved,omitempty"` // the newest tokens live only in memory (storage write failing)
}

// infoOf is the displayable view of r.
func infoOf(r *record) Info {
	return Info{AppID: r.AppID, Family: r.Family, State: r.State, AccessExpiry: r.AccessExpiry,
		RefreshExpiry: r.RefreshExpiry, LastRefresh: r.LastRefresh, AuthorizedAt: r.AuthorizedAt,
		UpdatedAt: r.UpdatedAt, Generation: r.Generation, Permissions: r.Permissions, LastError: r.LastError}
}

func (e *Engine) loadRecord(ctx context.Context, appid string) (*record, error) {
	rec, _, err := e.loadRecordSeal(ctx, appid)
	return rec, err
}

// loadRecordSeal is loadRecord that also says how the record is stored
// (sealPlain, sealCurrent, sealPrevious).
func (e *Engine) loadRecordSeal(ctx context.Context, appid string) (*record, string, error) {
	key := e.keys.authorizer(appid)
	b, err := e.store.Load(ctx, key)
	if err != nil {
		return nil, "", err
	}
	var d diskRecord
	seal, err := e.codec.decodeSeal(key, b, &d)
	if err != nil {
		return nil, "", err
	}
	if d.AppID != appid {
		return nil, "", fmt.Errorf("record %s holds appid %q: %w", key, d.AppID, errRecordCorrupt)
	}
	return d.record(), seal, nil
}

// saveRecord writes rec, retrying a failing write twice.
func (e *Engine) saveRecord(ctx context.Context, rec *record) error {
	key := e.keys.authorizer(rec.AppID)
	b, err := e.codec.encode(key, rec.disk())
	if err != nil {
		return err
	}
	for n := 0; ; n++ {
		err = e.store.Store(ctx, key, b)
		if err == nil || n == 2 {
			return err
		}
		if sleep(ctx, time.Duration(100<<n)*time.Millisecond) != nil {
			return err
		}
	}
}

// loadInto reads the stored record of appid into its slot. A storage failure is
// returned; a missing record installs a "missing" entry.
func (e *Engine) loadInto(ctx context.Context, appid string, s *slot) (*entry, error) {
	rec, err := e.loadRecord(ctx, appid)
	if err != nil && !isNotExist(err) {
		return s.cur.Load(), err
	}
	return e.adopt(s, rec, e.now()), nil
}

// appIDs lists the authorizers that have a record in storage, sorted.
func (e *Engine) appIDs(ctx context.Context) ([]string, error) {
	list, err := e.store.List(ctx, e.keys.authorizerDir(), false)
	if err != nil {
		if isNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	ids := make([]string, 0, len(list))
	for _, k := range list {
		name := path.Base(k)
		if id, ok := strings.CutSuffix(name, ".json"); ok && ValidAppID(id) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}
