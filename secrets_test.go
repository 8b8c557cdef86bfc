package tptoken

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/tptoken/caddy-tptoken/emulator"
)

// No secret in the log, the adapted JSON or the config; a warning for each
// set-up that puts the secrets at risk.

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

func TestDebugLogAndAdaptedJSONHoldNoSecret(t *testing.T) {
	for _, fam := range e2eFamilies {
		t.Run(string(fam), func(t *testing.T) {
			x := newE2E(t, fam, emulator.Lifetimes{AccessTokenTTL: 4 * time.Second}, withGlobal("refresh_ahead 1s"))
			x.authorize("tt01app")
			for range 5 {
				if a := x.call("POST", x.apiPath()+"?k=v", appidHeader("tt01app"), `{"x":1}`); a.Status != 200 {
					t.Fatalf("answer = %+v", a)
				}
			}
			x.emu.RevokeAccessToken("tt01app", fam) // a replay, logged at info
			time.Sleep(4 * time.Second)             // a rotation
			if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 {
				t.Fatalf("answer = %+v", a)
			}
			log := x.debugLog()
			if !strings.Contains(log, "upstream roundtrip") {
				t.Fatal("the debug log lacks reverse_proxy's upstream roundtrip lines: the check would prove nothing")
			}
			x.assertNoSecretIn("the DEBUG log", log)
			cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(x.caddyCfg), nil)
			if err != nil {
				t.Fatal(err)
			}
			x.assertNoSecretIn("the adapted JSON", string(cfg))
			if !strings.Contains(string(cfg), "{env.TPT_SECRET}") {
				t.Fatal("the adapted JSON lost the secret placeholder")
			}
		})
	}
}
