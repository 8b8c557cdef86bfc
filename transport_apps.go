package tptoken

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// An app token on the outgoing request (transport.go: outgoing): where the
// route's APIs take it (docs/protocol.md §App credentials). Whatever the
// place, every copy a client sent where the platform's APIs take a token is
// removed first (the headers access-token, access_token, x-token and the
// query parameter access_token, plus the route's own name), so a client cannot
// slip a token of its own past the injection.

// appTokenHeaders are the canonical keys of the headers the platform's APIs
// take a token from (Go keeps '_' in a canonical key: Access_token).
var appTokenHeaders = [...]string{"Access-Token", "Access_token", "X-Token"}

// appTokenParam is the query parameter and body field the platform's older
// APIs take a token from.
const appTokenParam = "access_token"

// put places secret on o (a copy of req) for a header or query placement; a
// body placement is putInBody's, once the body is known.
func (p placement) put(o *outgoingRequest, req *http.Request, secret string) {
	out := &o.Request
	h := make(http.Header, len(req.Header)+1)
	for k, v := range req.Header {
		h[k] = v
	}
	for _, k := range appTokenHeaders {
		delete(h, k)
	}
	if p.in == injectHeader {
		delete(h, p.name)
		h[p.name] = []string{secret}
	}
	out.Header = h
	raw := withoutParams(req.URL.RawQuery, appTokenParam, p.name)
	if p.in == injectQuery {
		if raw != "" {
			raw += "&"
		}
		raw += queryEscape(p.name) + "=" + queryEscape(secret)
	}
	if raw != req.URL.RawQuery {
		o.url = *req.URL
		o.url.RawQuery = raw
		out.URL = &o.url
	}
}

// withoutParams is raw without any occurrence of the names (each compared
// unescaped), the rest byte for byte.
func withoutParams(raw string, names ...string) string {
	for _, n := range names {
		_, rest, found := takeQueryParam(raw, n)
		if found {
			raw = rest
		}
	}
	return raw
}

// putInBody makes out's body the request's JSON object with field set to
// secret as its first member, any top-level copy the client sent removed (no
// body: an object of that one member). The handler made sure the body is a
// complete JSON object (injection.checkBody).
func putInBody(out *http.Request, body *bodyCopy, field, secret string) {
	var obj []byte
	if body != nil {
		obj = body.buf
	}
	b, err := withBodyToken(obj, field, secret)
	if err != nil { // checked by the handler: cannot happen
		b = nil
	}
	out.Body = io.NopCloser(bytes.NewReader(b))
	out.ContentLength = int64(len(b))
	out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	if out.Header.Get("Content-Type") == "" {
		out.Header.Set("Content-Type", "application/json")
	}
}

// withBodyToken returns {"<field>":"<secret>", ...obj's members but field}.
// Member values are kept byte for byte; whitespace between members is not.
// An empty obj gives the one member. It fails, saying why, unless obj is one
// JSON object.
func withBodyToken(obj []byte, field, secret string) ([]byte, error) {
	key, _ := json.Marshal(field)
	val, _ := json.Marshal(secret)
	var b bytes.Buffer
	b.Grow(len(obj) + len(key) + len(val) + 4)
	b.WriteByte('{')
	b.Write(key)
	b.WriteByte(':')
	b.Write(val)
	if len(bytes.TrimSpace(obj)) == 0 {
		b.WriteByte('}')
		return b.Bytes(), nil
	}
	dec := json.NewDecoder(bytes.NewReader(obj))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("is not a JSON object, so the token cannot be put in it")
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return nil, errors.New("is not valid JSON")
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, errors.New("is not valid JSON")
		}
		name, _ := k.(string)
		if name == field {
			continue // the client's copy
		}
		kb, _ := json.Marshal(name)
		b.WriteByte(',')
		b.Write(kb)
		b.WriteByte(':')
		b.Write(v)
	}
	if _, err := dec.Token(); err != nil {
		return nil, errors.New("is not valid JSON")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("holds more than one JSON value")
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// appRejections are, per app token kind, the codes with which an answer
// rejects the token sent (docs/protocol.md §App credentials), and where: the
// new gateway's err_no, the older APIs' errcode, or a code inside data or
// extra (open.douyin.com's older APIs).
var appRejections = map[string]struct {
	errNo, errcode, dataCode []int
}{
	"client_token":     {errNo: []int{28001003, 28001008}, dataCode: []int{2190002, 2190008, 10008}},
	"app_access_token": {errNo: []int{28001003, 28001008, 40002}, errcode: []int{40002}},
}

// appRejectionBytes are the codes of each kind as they appear in a JSON body:
// a body holding none of them is not decoded.
var appRejectionBytes = func() map[string][][]byte {
	m := map[string][][]byte{}
	for kind, r := range appRejections {
		for _, cs := range [][]int{r.errNo, r.errcode, r.dataCode} {
			for _, c := range cs {
				m[kind] = append(m[kind], []byte(strconv.Itoa(c)))
			}
		}
	}
	return m
}()

// appRejectionCode returns the code of a JSON answer that rejects an app
// token of kind, or 0.
func appRejectionCode(b []byte, kind string) int {
	held := false
	for _, c := range appRejectionBytes[kind] {
		if bytes.Contains(b, c) {
			held = true
			break
		}
	}
	if !held {
		return 0
	}
	var v struct {
		ErrNo   json.Number     `json:"err_no"`
		Errcode json.Number     `json:"errcode"`
		Data    json.RawMessage `json:"data"`
		Extra   json.RawMessage `json:"extra"`
	}
	if json.Unmarshal(b, &v) != nil {
		return 0
	}
	r := appRejections[kind]
	if c := codeIn(v.ErrNo, r.errNo); c != 0 {
		return c
	}
	if c := codeIn(v.Errcode, r.errcode); c != 0 {
		return c
	}
	for _, nested := range []json.RawMessage{v.Data, v.Extra} {
		if len(r.dataCode) == 0 || len(nested) == 0 || nested[0] != '{' {
			continue
		}
		var d struct {
			ErrorCode json.Number `json:"error_code"`
		}
		if json.Unmarshal(nested, &d) == nil {
			if c := codeIn(d.ErrorCode, r.dataCode); c != 0 {
				return c
			}
		}
	}
	return 0
}

func codeIn(n json.Number, codes []int) int {
	if n == "" {
		return 0
	}
	c, err := strconv.Atoi(strings.TrimSpace(string(n)))
	if err != nil {
		return 0
	}
	for _, x := range codes {
		if x == c {
			return c
		}
	}
	return 0
}

// rejection returns the code of an answer that rejects the token sent (or
// says its authorization is gone) and which, or 0: in the route's family
// field (inspect.go), or for an app token in its kind's places.
func (inj *injection) rejection(resp *http.Response) (int, answerKind) {
	if inj.app == nil {
		return inspect(resp, inj.comp.family, inj.component)
	}
	plain := readInspectable(resp)
	if plain == nil {
		return 0, answerOther
	}
	if code := appRejectionCode(plain, inj.app.kind); code != 0 {
		return code, answerRejected
	}
	return 0, answerOther
}
