package tptoken

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// The platform rejects a token with HTTP 200 and a code in the body
// (docs/protocol.md §Errors): the transport reads a small JSON answer to find such a
// code, in the route's own family field only, and hands the body back intact.
// It also finds the codes that say the authorization behind an authorizer
// token is gone (§Downstream APIs): those are reported, never replayed.

// Maximum response size inspected for a code; larger or streaming answers
// pass through untouched.
const maxInspect = 64 << 10

// readCloser puts a read part back in front of a body.
type readCloser struct {
	io.Reader
	io.Closer
}

// answerKind is what an inspected answer says of the token sent.
type answerKind int

const (
	answerOther    answerKind = iota // nothing the transport acts on
	answerRejected                   // the token is invalid or expired: report it, replay with a fresh one
	answerGone                       // the authorization behind the token is gone: report it, no replay
)

// inspect returns the platform code of a small JSON answer that rejects the
// token sent or says its authorization is gone, and which of the two; or 0.
// Only answers with a JSON media type and at most maxInspect bytes are read
// (the body is then put back); others are untouched.
func inspect(resp *http.Response, family tokensource.Family, component bool) (int, answerKind) {
	plain := readInspectable(resp)
	if plain == nil {
		return 0, answerOther
	}
	return classifyAnswer(plain, family, component)
}

// readInspectable returns the body of a small JSON answer (gunzipped), putting
// it back in front of resp, or nil for an answer not to inspect.
func readInspectable(resp *http.Response) []byte {
	if resp.StatusCode != http.StatusOK || resp.ContentLength > maxInspect || resp.ContentLength == 0 {
		return nil
	}
	// The keys are canonical: index the map instead of Header.Get, which
	// canonicalizes its argument on every call.
	if !isJSON(firstValue(resp.Header, "Content-Type")) {
		return nil
	}
	enc := firstValue(resp.Header, "Content-Encoding")
	if enc != "" && enc != "gzip" && enc != "identity" {
		return nil
	}
	var raw []byte
	var err error
	if resp.ContentLength > 0 {
		raw = make([]byte, resp.ContentLength)
		_, err = io.ReadFull(resp.Body, raw)
	} else {
		raw, err = io.ReadAll(io.LimitReader(resp.Body, maxInspect+1))
	}
	if err != nil || len(raw) > maxInspect {
		// too large after all (unknown length), or cut short: hand back what was
		// read in front of the rest, untouched
		resp.Body = readCloser{io.MultiReader(bytes.NewReader(raw), resp.Body), resp.Body}
		return nil
	}
	_ = resp.Body.Close()
	body := new(bytesBody)
	body.Reset(raw)
	resp.Body = body
	plain := raw
	if enc == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil
		}
		plain, err = io.ReadAll(io.LimitReader(zr, 4*maxInspect))
		if err != nil {
			return nil
		}
	}
	return plain
}

// firstValue is h.Get(key) for a key already in canonical form.
func firstValue(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// bytesBody is an inspected answer handed back to reverse_proxy: what
// io.NopCloser(bytes.NewReader(b)) is (WriteTo included), in one allocation.
type bytesBody struct{ bytes.Reader }

// Read returns io.EOF with the last bytes, as net/http's body of a known
// length does: reverse_proxy copies answers in a loop that allocates on every
// turn (a logger each), and a separate (0, io.EOF) would cost it one more.
func (b *bytesBody) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	if err == nil && b.Len() == 0 {
		err = io.EOF
	}
	return n, err
}

// Close does nothing: the upstream's body is closed already.
func (*bytesBody) Close() error { return nil }

// isJSON reports a JSON media type (application/json, text/json, or +json).
func isJSON(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	mt = strings.TrimSpace(mt)
	return strings.EqualFold(mt, "application/json") || strings.EqualFold(mt, "text/json") ||
		len(mt) > 5 && strings.EqualFold(mt[len(mt)-5:], "+json")
}

// goneCodes are, per family, the codes with which a downstream answer says
// the authorization behind the authorizer token sent is gone (docs/protocol.md
// §Downstream APIs): v1 errno 40022 / 40004; v2 err_no 40022 / 40004 (the
// numbers v2's TP endpoints use for it) and 28001014 / 28001016 (no capability
// authorized, app banned or offline). Such an answer only makes the engine
// verify the authorization with one refresh, within the bounds of rejections:
// a code here that means something else costs at most that refresh.
var goneCodes = [2][]int{
	{40022, 40004},
	{40022, 40004, 28001014, 28001016},
}

// candidates are, per family and token kind ([v1, v2][authorizer,
// component]), the codes an answer is looked for, in the form they take in a
// JSON body: the rejections of the token (tokensource.RejectionCodes) and, on
// authorizer routes, goneCodes. A body without one of them is not decoded.
var candidates = func() (t [2][2][][]byte) {
	for i, f := range []tokensource.Family{tokensource.V1, tokensource.V2} {
		for j, component := range []bool{false, true} {
			codes := tokensource.RejectionCodes(f, component)
			if !component {
				codes = append(slices.Clone(codes), goneCodes[i]...)
			}
			for _, c := range codes {
				t[i][j] = append(t[i][j], []byte(strconv.Itoa(c)))
			}
		}
	}
	return t
}()

// classifyAnswer returns the code of a JSON answer that rejects the token sent
// or says its authorization is gone, and which; or 0. Only the family's own
// top-level field counts (v1 errno, v2 err_no), and only the codes for the kind
// of token the route injects: the client chooses the path and query, so an
// answer it can steer must not make a code of the other family, or of the
// other token, or one nested in data, count.
func classifyAnswer(b []byte, family tokensource.Family, component bool) (int, answerKind) {
	i, j := 0, 0
	if family == tokensource.V2 {
		i = 1
	}
	if component {
		j = 1
	}
	held := false
	for _, c := range candidates[i][j] {
		if bytes.Contains(b, c) {
			held = true
			break
		}
	}
	if !held {
		return 0, answerOther
	}
	var v1 struct {
		Errno json.Number `json:"errno"`
	}
	var v2 struct {
		ErrNo json.Number `json:"err_no"`
	}
	var err error
	n := &v1.Errno
	if i == 0 {
		err = json.Unmarshal(b, &v1)
	} else {
		err, n = json.Unmarshal(b, &v2), &v2.ErrNo
	}
	if err != nil {
		return 0, answerOther
	}
	code64, err := n.Int64()
	if err != nil {
		return 0, answerOther
	}
	switch code := int(code64); {
	case slices.Contains(tokensource.RejectionCodes(family, component), code):
		return code, answerRejected
	case !component && slices.Contains(goneCodes[i], code):
		return code, answerGone
	}
	return 0, answerOther
}
