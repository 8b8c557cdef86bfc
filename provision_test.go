package tptoken

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// loadWithLog loads a Caddyfile made of a global block (tptoken blocks
// given) and site, logging at INFO to a file; it returns what was logged and
// the load error.
func loadWithLog(t *testing.T, tptokenBlocks, site string) (string, error) {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	cfg := fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
	storage file_system %s
	log {
		output file %s
		level INFO
	}
%s
}
%s`, t.TempDir(), logFile, tptokenBlocks, site)
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting:\n%s\n%v", cfg, err)
	}
	lerr := caddy.Load(js, true)
	b, _ := os.ReadFile(logFile)
	return string(b), lerr
}

// Issue 16, point 7: risky set-ups load, with one warning each per config
// load saying what to do, and never the value.
func TestRiskySecretSetUpsLoadWithAWarningEachNamingTheFix(t *testing.T) {
	if testing.Short() {
		t.Skip("loads Caddy configs")
	}
	t.Cleanup(func() { _ = stopCaddy() })
	site := fmt.Sprintf("http://127.0.0.1:%d {\n\trespond ok\n}", freePort(t))
	const literalSecret = "LITERAL-appsecret-0042"
	const passphrase = "correct horse battery staple 32c" // 32 characters: taken as the key bytes
	t.Setenv("TPT_SECRET", "env-appsecret-0042")
	t.Setenv("TPT_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
	t.Setenv("TPT_PASSPHRASE", passphrase)

	risky := "\ttptoken {\n\t\tcomponent_appid tt00risky\n\t\tcomponent_appsecret " + literalSecret + "\n\t\tendpoint http://127.0.0.1:9\n\t}\n" +
		"\ttptoken {\n\t\tcomponent_appid tt00weakkey\n\t\tcomponent_appsecret {env.TPT_SECRET}\n\t\tendpoint http://127.0.0.1:9\n\t\tencryption_key {env.TPT_PASSPHRASE}\n\t}"
	for load := 1; load <= 2; load++ {
		log, err := loadWithLog(t, risky, site)
		if err != nil {
			t.Fatalf("a risky but working set-up was refused: %v", err)
		}
		for _, want := range []struct{ comp, option, says string }{
			{"tt00risky", "component_appsecret", "{env.VAR} or {file./path/to/secret}"},
			{"tt00risky", "encryption_key", "openssl rand -base64 32"},
			{"tt00weakkey", "encryption_key", "32-character passphrase"},
		} {
			n := 0
			for _, l := range strings.Split(log, "\n") {
				if strings.Contains(l, `"level":"warn"`) && strings.Contains(l, `"component_appid":"`+want.comp+`"`) &&
					strings.Contains(l, `"option":"`+want.option+`"`) && strings.Contains(l, want.says) {
					n++
				}
			}
			if n != 1 {
				t.Errorf("load %d: %d warnings for %s %s saying %q, want 1:\n%s", load, n, want.comp, want.option, want.says, log)
			}
		}
		if strings.Contains(log, literalSecret) || strings.Contains(log, passphrase) {
			t.Fatalf("a warning holds the secret:\n%s", log)
		}
	}

	safe := "\ttptoken {\n\t\tcomponent_appid tt00safe\n\t\tcomponent_appsecret {env.TPT_SECRET}\n\t\tendpoint http://127.0.0.1:9\n\t\tencryption_key {env.TPT_KEY}\n\t}"
	log, err := loadWithLog(t, safe, site)
	if err != nil || strings.Contains(log, `"level":"warn","ts"`) && strings.Contains(log, `"logger":"tptoken"`) && strings.Contains(log, `"option"`) {
		t.Fatalf("a safe set-up: %v, or warned:\n%s", err, log)
	}
}

// Issue 16, point 6: a provisioning error is logged by tptoken as a short
// first line before Caddy's long chained error.
func TestAProvisioningErrorHasAShortFirstLine(t *testing.T) {
	if testing.Short() {
		t.Skip("loads Caddy configs")
	}
	t.Cleanup(func() { _ = stopCaddy() })
	t.Setenv("TPT_SECRET", "env-appsecret-0042")
	blocks := "\ttptoken {\n\t\tcomponent_appid tt00a\n\t\tcomponent_appsecret {env.TPT_SECRET}\n\t}\n\ttptoken {\n\t\tcomponent_appid tt00b\n\t\tcomponent_appsecret {env.TPT_SECRET}\n\t}"
	site := fmt.Sprintf("http://127.0.0.1:%d {\n\troute {\n\t\ttptoken\n\t\trespond ok\n\t}\n}", freePort(t))
	log, err := loadWithLog(t, blocks, site)
	if err == nil || !strings.Contains(err.Error(), "loading module 'tptoken'") {
		t.Fatalf("a handler naming no component among two loaded: %v", err)
	}
	var first string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, `"level":"error"`) {
			first = l
			break
		}
	}
	const want = `"msg":"configuration error: several components are configured (tt00a, tt00b): name one with ` + "`component <appid>`" + `"`
	if !strings.Contains(first, want) || len(first) >= len(err.Error())+100 {
		t.Fatalf("first error line %q, want one holding %s; Caddy's error: %v", first, want, err)
	}
}
