package tptoken

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile" // registers the caddyfile adapter
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/caddyfile_adapt")

const adaptDir = "testdata/caddyfile_adapt"

// adapt runs the Caddyfile adapter the way `caddy adapt` does, naming the input
// "Caddyfile" so errors read Caddyfile:<line>.
func adapt(t *testing.T, input []byte) ([]byte, error) {
	t.Helper()
	a := caddyconfig.GetAdapter("caddyfile")
	if a == nil {
		t.Fatal("the caddyfile adapter is not registered")
	}
	out, warnings, err := a.Adapt(input, map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return nil, err
	}
	for _, w := range warnings {
		t.Errorf("adapt warning: %s", w.String())
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, out, "", "\t"); err != nil {
		t.Fatalf("adapted JSON does not indent: %v", err)
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

var (
	envPlaceholder  = regexp.MustCompile(`\{env\.([A-Za-z0-9_]+)\}`)
	filePlaceholder = regexp.MustCompile(`\{file\.([^}]+)\}`)
)

// sentinel is a recognisable value of the shape the option wants, so the
// adapted config also provisions: 43 characters for an EncodingAESKey, 32 for a
// storage key, an appid for an appid.
func sentinel(name string) string {
	switch {
	case strings.Contains(name, "AES_KEY"): // base64 characters only
		return ("SENTINEL" + strings.ReplaceAll(name, "_", "") + strings.Repeat("x", 43))[:43]
	case strings.Contains(name, "STORAGE_KEY"):
		return ("SENTINEL" + name + strings.Repeat("x", 32))[:32]
	case strings.Contains(name, "APPID"):
		return "SENTINEL_" + name
	}
	return "SENTINEL-" + name + "-value"
}

// setSecretEnv sets every {env.X} of input to its sentinel and returns the
// placeholders of input with the value each must never be replaced by.
func setSecretEnv(t *testing.T, input []byte) map[string]string {
	t.Helper()
	secrets := map[string]string{}
	for _, m := range envPlaceholder.FindAllSubmatch(input, -1) {
		name := string(m[1])
		t.Setenv(name, sentinel(name))
		secrets[string(m[0])] = sentinel(name)
	}
	for _, m := range filePlaceholder.FindAllSubmatch(input, -1) {
		b, err := os.ReadFile(string(m[1]))
		if err != nil {
			t.Fatalf("%s: the test needs the file, to check its content stays out: %v", m[0], err)
		}
		secrets[string(m[0])] = strings.TrimSpace(string(b))
	}
	return secrets
}

func goldenCaddyfiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(adaptDir, "*.caddyfile"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden Caddyfiles in %s (%v)", adaptDir, err)
	}
	return files
}

func TestAdaptCaddyfileMatchesGolden(t *testing.T) {
	for _, in := range goldenCaddyfiles(t) {
		name := strings.TrimSuffix(filepath.Base(in), ".caddyfile")
		t.Run(name, func(t *testing.T) {
			input, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			setSecretEnv(t, input)
			got, err := adapt(t, input)
			if err != nil {
				t.Fatalf("adapting %s: %v", in, err)
			}
			golden := strings.TrimSuffix(in, ".caddyfile") + ".json"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestAdaptCaddyfileMatchesGolden -update to write it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("adapted %s differs from %s (rerun with -update if the change is intended):\n%s", in, golden, got)
			}
		})
	}
}

// Secrets given as {env.X} / {file.X} must reach the JSON as placeholders:
// resolved at provision, never at adapt time.
func TestAdaptKeepsSecretPlaceholders(t *testing.T) {
	for _, in := range goldenCaddyfiles(t) {
		t.Run(filepath.Base(in), func(t *testing.T) {
			input, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			secrets := setSecretEnv(t, input)
			if len(secrets) == 0 {
				t.Fatalf("%s has no {env.*} / {file.*} secret: every golden form should use one", in)
			}
			got, err := adapt(t, input)
			if err != nil {
				t.Fatal(err)
			}
			for placeholder, value := range secrets {
				if !bytes.Contains(got, []byte(placeholder)) {
					t.Errorf("placeholder %s is missing from the adapted JSON", placeholder)
				}
				if bytes.Contains(got, []byte(value)) {
					t.Errorf("the value of %s (%q) was resolved into the adapted JSON", placeholder, value)
				}
			}
			// The golden JSON on disk holds no value either.
			if !*update {
				golden, err := os.ReadFile(strings.TrimSuffix(in, ".caddyfile") + ".json")
				if err != nil {
					t.Fatal(err)
				}
				for placeholder, value := range secrets {
					if bytes.Contains(golden, []byte(value)) {
						t.Errorf("golden JSON holds the value of %s", placeholder)
					}
				}
			}
		})
	}
}

// handlerOrder lists the handler names of a route list depth-first, in the
// order a request meets them.
func handlerOrder(routes []any) []string {
	var names []string
	for _, r := range routes {
		route, _ := r.(map[string]any)
		handlers, _ := route["handle"].([]any)
		for _, h := range handlers {
			hm, _ := h.(map[string]any)
			name, _ := hm["handler"].(string)
			if name == "subroute" {
				sub, _ := hm["routes"].([]any)
				names = append(names, handlerOrder(sub)...)
				continue
			}
			names = append(names, name)
		}
	}
	return names
}

func serverRoutes(t *testing.T, cfgJSON []byte, server string) []any {
	t.Helper()
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []any `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	srv, ok := cfg.Apps.HTTP.Servers[server]
	if !ok {
		t.Fatalf("no server %s in %s", server, cfgJSON)
	}
	return srv.Routes
}

// Written after reverse_proxy (and after respond), the handlers still run first:
// tptoken is ordered before reverse_proxy, tptoken_events before respond.
func TestAdaptOrdersHandlersBeforeReverseProxyAndRespond(t *testing.T) {
	t.Setenv("TP_COMPONENT_APPSECRET", "s")
	got, err := adapt(t, []byte(`{
	tptoken {
		component_appid tt_component_1
		component_appsecret {env.TP_COMPONENT_APPSECRET}
	}
}

:8080 {
	reverse_proxy https://open.microapp.bytedance.com {
		transport tptoken
	}
	tptoken {
		appid path
	}
}

:9443 {
	respond /healthz "ok"
	tptoken_events
}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ server, first, then string }{
		{"srv0", "tptoken", "reverse_proxy"},
		{"srv1", "tptoken_events", "static_response"},
	} {
		order := handlerOrder(serverRoutes(t, got, c.server))
		i, j := slices.Index(order, c.first), slices.Index(order, c.then)
		if i < 0 || j < 0 || i > j {
			t.Errorf("%s: handler order %v, want %s before %s", c.server, order, c.first, c.then)
		}
	}
}

// A parse error in the adapted Caddyfile names the file and line.
func TestAdaptErrorsCarryCaddyfileLine(t *testing.T) {
	tests := []struct {
		name, input, mention, at string
	}{
		{"handler unknown subdirective", ":8080 {\n\ttptoken {\n\t\tappid_from header X\n\t}\n}\n", "appid_from", "Caddyfile:3"},
		{"global option duplicate", "{\n\ttptoken {\n\t\tcomponent_appid a\n\t\tcomponent_appid b\n\t}\n}\n", "component_appid", "Caddyfile:4"},
		{"events two arguments", ":9443 {\n\n\ttptoken_events a b\n}\n", "tptoken_events", "Caddyfile:3"},
		{"second global block repeats the component", "{\n\ttptoken {\n\t\tcomponent_appid a\n\t\tcomponent_appsecret s\n\t}\n\ttptoken {\n\t\tcomponent_appid a\n\t\tcomponent_appsecret t\n\t}\n}\n", "component_appid a", "Caddyfile:7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := adapt(t, []byte(tt.input))
			wantErr(t, err, tt.mention, tt.at)
		})
	}
}

// Every golden config loads: Caddy decodes and provisions each module from the
// adapted JSON (with the sentinel secrets), without starting anything.
func TestAdaptedGoldenConfigsProvision(t *testing.T) {
	// Keep Caddy's default storage and config dirs out of the user's home.
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	for _, in := range goldenCaddyfiles(t) {
		t.Run(filepath.Base(in), func(t *testing.T) {
			input, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			setSecretEnv(t, input)
			got, err := adapt(t, input)
			if err != nil {
				t.Fatal(err)
			}
			var cfg caddy.Config
			if err := json.Unmarshal(got, &cfg); err != nil {
				t.Fatal(err)
			}
			if err := caddy.Validate(&cfg); err != nil {
				t.Errorf("the adapted config of %s does not provision: %v", in, err)
			}
		})
	}
}
