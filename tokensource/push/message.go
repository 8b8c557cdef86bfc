package push

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/tptoken/caddy-tptoken/tokensource/secret"
)

// Kind is what a push message is about.
type Kind int

const (
	// Other is a message this package does not interpret (its Event is kept).
	Other Kind = iota
	// Ticket carries a component_ticket (MsgType "Ticket" and/or Event "PUSH").
	Ticket
	// Authorized: a mini-app authorized the TP (授权成功); carries a code.
	Authorized
	// UpdateAuthorized: the retrieve-code notification (授权码找回); carries a code.
	UpdateAuthorized
	// Unauthorized: the mini-app revoked the authorization (授权解除).
	Unauthorized
)

func (k Kind) String() string {
	switch k {
	case Ticket:
		return "ticket"
	case Authorized:
		return "authorized"
	case UpdateAuthorized:
		return "update_authorized"
	case Unauthorized:
		return "unauthorized"
	}
	return "other"
}

// Message is a decrypted, verified push. Ticket and AuthorizationCode are
// Secrets: printing or logging a Message redacts them.
type Message struct {
	Kind Kind

	// Timestamp is the signed TimeStamp of the envelope; ID identifies the
	// delivery (a hash of MsgSignature, which covers timestamp, nonce and
	// ciphertext): a retry of the same body has the same ID.
	Timestamp time.Time
	ID        string

	// Event is the Event field as pushed ("PUSH", "AUTHORIZED", ...); MsgType is
	// "Ticket" for ticket pushes.
	Event        string
	MsgType      string
	FromUserName string

	// Ticket pushes.
	Ticket     secret.Secret
	CreateTime time.Time // zero when absent or unparsable

	// Authorization events.
	AppID             string    // the authorizer (mini-app) appid
	TpAppID           string    // the TP appid named in the payload (may be empty)
	EventTime         time.Time // zero when absent or unparsable
	AuthorizationCode secret.Secret
	CodeExpiresIn     int // seconds; 0 when absent or unparsable

	// Present only for 代创建 mini-apps.
	AppName     string
	AppIcon     string
	CompanyName string
}

// payload is the decrypted JSON, read leniently: times are strings (or unix
// seconds), AuthorizationCodeExpiresIn a number or a string.
type payload struct {
	Ticket                     string     `json:"Ticket"`
	FromUserName               string     `json:"FromUserName"`
	CreateTime                 flexString `json:"CreateTime"`
	MsgType                    string     `json:"MsgType"`
	Event                      string     `json:"Event"`
	AppID                      string     `json:"AppId"`
	TpAppID                    string     `json:"TpAppId"`
	EventTime                  flexString `json:"EventTime"`
	AuthorizationCode          string     `json:"AuthorizationCode"`
	AuthorizationCodeExpiresIn flexString `json:"AuthorizationCodeExpiresIn"`
	AppName                    string     `json:"AppName"`
	AppIcon                    string     `json:"AppIcon"`
	CompanyName                string     `json:"CompanyName"`
}

func (p *Crypto) parse(msg []byte) (*Message, error) {
	var pl payload
	// The error text of encoding/json can quote values, so it is not wrapped.
	if err := json.Unmarshal(msg, &pl); err != nil {
		return nil, fmt.Errorf("%w: decrypted message is not the expected JSON object", ErrMalformed)
	}
	m := &Message{
		Event: pl.Event, MsgType: pl.MsgType, FromUserName: pl.FromUserName,
		Ticket: secret.Secret(pl.Ticket), CreateTime: parseTime(string(pl.CreateTime)),
		AppID: pl.AppID, TpAppID: pl.TpAppID, EventTime: parseTime(string(pl.EventTime)),
		AuthorizationCode: secret.Secret(pl.AuthorizationCode), CodeExpiresIn: parseSeconds(string(pl.AuthorizationCodeExpiresIn)),
		AppName: pl.AppName, AppIcon: pl.AppIcon, CompanyName: pl.CompanyName,
	}
	switch {
	case strings.EqualFold(pl.MsgType, "Ticket") || strings.EqualFold(pl.Event, "PUSH"):
		m.Kind = Ticket
	case strings.EqualFold(pl.Event, "AUTHORIZED"):
		m.Kind = Authorized
	case strings.EqualFold(pl.Event, "UPDATE_AUTHORIZED"):
		m.Kind = UpdateAuthorized
	case strings.EqualFold(pl.Event, "UNAUTHORIZED"):
		m.Kind = Unauthorized
	}
	if m.TpAppID != "" && m.TpAppID != p.appID {
		return nil, fmt.Errorf("%w: TpAppId %s, want %s", ErrAppID, quoteAppID([]byte(m.TpAppID)), p.appID)
	}
	switch m.Kind {
	case Ticket:
		if m.Ticket == "" {
			return nil, fmt.Errorf("%w: ticket push without Ticket", ErrMalformed)
		}
	case Authorized, UpdateAuthorized:
		if m.AppID == "" || m.AuthorizationCode == "" {
			return nil, fmt.Errorf("%w: %s push without AppId or AuthorizationCode", ErrMalformed, m.Event)
		}
	case Unauthorized:
		if m.AppID == "" {
			return nil, fmt.Errorf("%w: %s push without AppId", ErrMalformed, m.Event)
		}
	}
	return m, nil
}

// beijing is the platform's time zone (UTC+8, no DST), fixed so no tzdata is needed.
var beijing = time.FixedZone("CST", 8*3600)

// TimeLayout is the layout of CreateTime and EventTime (Beijing time).
const TimeLayout = "2006-01-02 15:04:05"

// parseTime reads "yyyy-MM-dd HH:mm:ss" in Beijing time, or unix seconds.
// Missing or unparsable times give the zero time: they are informational.
func parseTime(s string) time.Time {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}
	}
	if t, err := time.ParseInLocation(TimeLayout, s, beijing); err == nil {
		return t
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && n > 0 && n < 1<<40 {
		return time.Unix(n, 0).In(beijing)
	}
	return time.Time{}
}

// FormatTime formats t as the platform does in push payloads.
func FormatTime(t time.Time) string { return t.In(beijing).Format(TimeLayout) }

// parseSeconds reads a non-negative number of seconds given as an integer, a
// float or a string of either; anything else is 0 (unknown).
func parseSeconds(s string) int {
	s = strings.TrimSpace(s)
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return n
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && f >= 0 && f < math.MaxInt32 {
		return int(f)
	}
	return 0
}
