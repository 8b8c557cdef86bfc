package secret

import (
	"encoding/json"
	"strings"
	"testing"
)

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSecretRedactsEverywhere(t *testing.T) {
	s := Secret("isvact.topsecret")
	for _, got := range []string{s.String(), s.GoString(), mustJSON(t, s), mustJSON(t, struct{ T Secret }{s})} {
		if strings.Contains(got, "topsecret") {
			t.Fatalf("%q leaks", got)
		}
	}
	if s.Reveal() != "isvact.topsecret" {
		t.Fatal("Reveal changed the value")
	}
	if s.Fingerprint() == "" || strings.Contains(s.Fingerprint(), "topsecret") {
		t.Fatal("bad fingerprint")
	}
}
