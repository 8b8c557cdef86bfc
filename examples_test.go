package tptoken

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/tptoken/caddy-tptoken/emulator"
)

// The configurations users copy must work: Caddyfile.example, every
// examples/*.Caddyfile and the README's full Caddyfile and JSON examples.

// exampleEnv sets the environment variables the examples read, with values of
// the right shape (they are resolved at provision, not at adapt time).
func exampleEnv(t *testing.T) {
	t.Helper()
	aes := "F5qdpIUZpxkEsbzEMM4jhomFInN2FTaOOK7SAl6sEuU"
	key := "dbeaed43481a64ade3fd44d5720d67e5d53a02b40a404d6e5d69ce1e37f13467"
	for k, v := range map[string]string{
		"TP_COMPONENT_APPID": "tt0123456789abcdef", "TP_COMPONENT_APPSECRET": "example-secret",
		"TP_MESSAGE_TOKEN": "example-message-token", "TP_ENCODING_AES_KEY": aes, "TP_STORAGE_KEY": key,
		"TP2_COMPONENT_APPID": "tt0fedcba987654321", "TP2_COMPONENT_APPSECRET": "example-secret-2",
		"TP2_MESSAGE_TOKEN": "example-message-token-2", "TP2_ENCODING_AES_KEY": aes,
		"SANDBOX_TP1_APPSECRET": "s1", "SANDBOX_TP1_MESSAGE_TOKEN": "m1", "SANDBOX_TP1_ENCODING_AES_KEY": aes,
		"SANDBOX_TP2_APPSECRET": "s2", "SANDBOX_TP2_MESSAGE_TOKEN": "m2", "SANDBOX_TP2_ENCODING_AES_KEY": aes,
		"SANDBOX_STORAGE_KEY": key,
	} {
		t.Setenv(k, v)
	}
}

// adaptCaddyfile adapts a Caddyfile; any warning fails the test (the README's
// aligned columns may be left unformatted).
func adaptCaddyfile(t *testing.T, name string, body []byte, allowUnformatted bool) []byte {
	t.Helper()
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": name})
	if err != nil {
		t.Errorf("%s does not adapt: %v", name, err)
		return nil
	}
	for _, w := range warnings {
		if allowUnformatted && strings.Contains(w.Message, "not formatted") {
			continue
		}
		t.Errorf("%s: adapt warning: %s", name, w.String())
	}
	return cfg
}

// usesTptoken checks that the adapted config holds the parts every tptoken
// site needs, so an example cannot silently lose them.
func usesTptoken(t *testing.T, name string, cfg []byte) {
	t.Helper()
	s := string(cfg)
	for _, want := range []string{`"tptoken":{`, `"handler":"tptoken"`, `"protocol":"tptoken"`, `"handler":"tptoken_events"`} {
		if !strings.Contains(s, want) {
			t.Errorf("%s: the adapted JSON lacks %s", name, want)
		}
	}
	if strings.Contains(s, "example-secret") || strings.Contains(s, "example-message-token") {
		t.Errorf("%s: a secret was pasted into the adapted JSON (use {env.X}, not {$X})", name)
	}
}

func TestCaddyfileExampleAdaptsAndValidates(t *testing.T) {
	exampleEnv(t)
	body, err := os.ReadFile("Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	cfg := adaptCaddyfile(t, "Caddyfile.example", body, false)
	if cfg == nil {
		t.FailNow()
	}
	usesTptoken(t, "Caddyfile.example", cfg)
	// Provisioning resolves the {env.*} secrets and checks them; it makes no
	// network call and starts nothing.
	var c caddy.Config
	if err := json.Unmarshal(cfg, &c); err != nil {
		t.Fatal(err)
	}
	c.StorageRaw = json.RawMessage(`{"module":"file_system","root":` + jsonString(t.TempDir()) + `}`)
	if err := caddy.Validate(&c); err != nil {
		t.Fatalf("Caddyfile.example does not validate: %v", err)
	}
}

func TestEveryExampleCaddyfileAdapts(t *testing.T) {
	exampleEnv(t)
	files, err := filepath.Glob("examples/*.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no examples/*.Caddyfile")
	}
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if cfg := adaptCaddyfile(t, f, body, false); cfg != nil {
			usesTptoken(t, f, cfg)
		}
	}
}

var readmeBlock = regexp.MustCompile("(?ms)^```(caddyfile|json)\n(.*?)^```")

// Full configurations in the README adapt (```caddyfile blocks; fragments are
// marked caddy-d), and its JSON configurations (```json blocks with "apps";
// others show answers) validate.
func TestReadmeConfigurationsWork(t *testing.T) {
	exampleEnv(t)
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var caddyfiles, jsons int
	for i, m := range readmeBlock.FindAllSubmatch(readme, -1) {
		kind, body := string(m[1]), m[2]
		name := "README.md block " + strconv.Itoa(i+1) + " (" + kind + ")"
		switch kind {
		case "caddyfile":
			caddyfiles++
			adaptCaddyfile(t, name, body, true)
		case "json":
			if !strings.Contains(string(body), `"apps"`) {
				continue
			}
			jsons++
			var c caddy.Config
			if err := json.Unmarshal(body, &c); err != nil {
				t.Errorf("%s is not a Caddy config: %v", name, err)
				continue
			}
			if !strings.Contains(string(body), `"protocol": "tptoken"`) {
				t.Errorf("%s does not use the tptoken transport", name)
			}
			c.StorageRaw = json.RawMessage(`{"module":"file_system","root":` + jsonString(t.TempDir()) + `}`)
			if err := caddy.Validate(&c); err != nil {
				t.Errorf("%s does not validate: %v", name, err)
			}
		}
	}
	if caddyfiles < 1 || jsons < 1 {
		t.Fatalf("found %d Caddyfile and %d JSON examples in README.md: the pattern no longer matches them", caddyfiles, jsons)
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
