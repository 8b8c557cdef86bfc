package tptoken

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

// Engines across restarts and config reloads: kept when nothing of the
// component's config changed (poolKey), never refreshing twice.

// loadComponent loads (or reloads) a config of the tptoken app alone, with
// comp and file storage at root, and returns the engine of its component.
func loadComponent(t *testing.T, comp Component, root string) *tokensource.Engine {
	t.Helper()
	cfg, err := json.Marshal(map[string]any{
		"admin":   map[string]any{"disabled": true},
		"storage": map[string]any{"module": "file_system", "root": root},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "ERROR"}}},
		"apps":    map[string]any{"tptoken": App{Components: []*Component{&comp}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading %s: %v", cfg, err)
	}
	v, err := caddy.ActiveContext().App("tptoken")
	if err != nil {
		t.Fatal(err)
	}
	app := v.(*App)
	if len(app.order) != 1 {
		t.Fatalf("%d components loaded", len(app.order))
	}
	return app.comps[app.order[0]].engine
}

// A reload keeps a component's engine (its token cache, its background work)
// only when nothing it is built from changed: any field of Component (every
// field, found by reflection, so a field added later is covered without a
// line here), a secret behind a placeholder, or the storage. A change that
// kept the old engine would leave the reload without effect.
func TestAReloadKeepsTheEngineOnlyWhenNothingOfItsConfigChanged(t *testing.T) {
	if testing.Short() {
		t.Skip("loads Caddy configs")
	}
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Cleanup(func() { _ = stopCaddy() })
	t.Setenv("TPT_POOL_SECRET", "pool-secret-1")
	root := t.TempDir()
	// Every option that comes in pairs is set, so that each field can change alone.
	base := Component{
		ComponentAppID: "tt00pool", ComponentAppSecret: "{env.TPT_POOL_SECRET}", MessageToken: "mt", EncodingAESKey: aesKey43,
		Endpoint: "http://127.0.0.1:9", EncryptionKey: encKeyHex,
	}
	// Values of the right shape for the fields whose type alone does not give one.
	changed := map[string]any{
		"ComponentAppID":         "tt00pool2",
		"ComponentAppSecret":     "pool-secret-2",
		"MessageToken":           "mt2",
		"EncodingAESKey":         "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq",
		"API":                    "v2",
		"Endpoint":               "http://127.0.0.1:10",
		"EncryptionKey":          encKeyB64,
		"PreviousEncryptionKeys": []string{encKey32},
	}

	first := loadComponent(t, base, root)
	if again := loadComponent(t, base, root); again != first {
		t.Fatal("reloading an unchanged config made a new engine: its cache and background work were thrown away")
	}

	typ := reflect.TypeFor[Component]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		t.Run(f.Name, func(t *testing.T) {
			c := base
			v := reflect.ValueOf(&c).Elem().Field(i)
			switch want, ok := changed[f.Name]; {
			case ok:
				v.Set(reflect.ValueOf(want))
			case f.Type == reflect.TypeFor[caddy.Duration]():
				v.Set(reflect.ValueOf(caddy.Duration(42 * time.Second)))
			case f.Type.Kind() == reflect.Bool:
				v.SetBool(!v.Bool())
			case f.Type.Kind() == reflect.Int:
				v.SetInt(v.Int() + 3)
			case f.Type.Kind() == reflect.Float64:
				v.SetFloat(v.Float() + 1.5)
			default:
				t.Fatalf("no changed value for Component.%s (%s): add a valid one to the changed table", f.Name, f.Type)
			}
			before := loadComponent(t, base, root)
			if after := loadComponent(t, c, root); after == before {
				t.Errorf("a reload that changed only %s kept the old engine", f.Name)
			}
		})
	}

	t.Run("a secret behind a placeholder", func(t *testing.T) {
		before := loadComponent(t, base, root)
		t.Setenv("TPT_POOL_SECRET", "pool-secret-other")
		if after := loadComponent(t, base, root); after == before {
			t.Error("a reload after the secret behind {env.TPT_POOL_SECRET} changed kept the old engine")
		}
	})
	t.Run("the storage", func(t *testing.T) {
		before := loadComponent(t, base, root)
		if after := loadComponent(t, base, t.TempDir()); after == before {
			t.Error("a reload onto another storage kept the old engine")
		}
	})
}

func TestRestartOnTheSameStorageNeedsNoReauthorization(t *testing.T) {
	x := newE2E(t, tokensource.V2, emulator.Lifetimes{})
	x.authorize("tt01app")
	if a := x.call("GET", x.apiPath(), appidHeader("tt01app"), ""); a.Status != 200 {
		t.Fatalf("before restart: %+v", a)
	}
	if err := stopCaddy(); err != nil {
		t.Fatal(err)
	}
	x.start()
	a := x.call("GET", x.apiPath(), appidHeader("tt01app"), "")
	if a.Status != 200 || a.Data.AppID != "tt01app" {
		t.Fatalf("after restart: %+v", a)
	}
	if s := x.emu.Stats().App("tt01app"); s.Exchanges != 1 || s.Retrieves != 0 {
		t.Fatalf("restart needed a new authorization: %+v", s)
	}
}

func TestConfigReloadUnderLoadNeitherRefreshesTwiceNorFails(t *testing.T) {
	// Access tokens live 6 s, so they rotate during the test while configs reload.
	x := newE2E(t, tokensource.V1, emulator.Lifetimes{AccessTokenTTL: 6 * time.Second}, withGlobal("refresh_ahead 2s"))
	ids := []string{"tt01app", "tt02app", "tt03app"}
	x.authorize(ids...)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	var served, redials int
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := ids[(w+i)%len(ids)]
				a, err := x.tryCall("GET", x.apiPath(), appidHeader(id), "")
				if isConnectionReset(err) {
					// Caddy's listener handoff on reload, or the old server
					// closing an idle keep-alive connection, can reset a
					// connection before any handler runs; a client retries.
					// Counted and reported, not hidden.
					mu.Lock()
					redials++
					mu.Unlock()
					a, err = x.tryCall("GET", x.apiPath(), appidHeader(id), "")
				}
				mu.Lock()
				served++
				switch {
				case err != nil:
					failures = append(failures, err.Error())
				case a.Status != 200 || a.Errno != 0 || a.Data.AppID != id:
					failures = append(failures, fmt.Sprintf("%s: %d %d %s", id, a.Status, a.Errno, a.Message))
				}
				mu.Unlock()
			}
		}()
	}
	deadline := time.Now().Add(14 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		x.site = fmt.Sprintf("header X-Reload %d", i) // a real config change each time
		x.start()
		time.Sleep(700 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d requests failed during reloads, first: %s", len(failures), served, failures[0])
	}
	total := x.emu.Stats().Total
	if total.Refresh40021 != 0 {
		t.Fatalf("a refresh token was used twice across reloads: %+v", total)
	}
	if total.Refreshes == 0 {
		t.Fatal("no rotation happened during the test")
	}
	// 14 s at one rotation per authorizer every ~4 s: a second refresher would double it.
	if max := int64(len(ids) * 5); total.Refreshes > max {
		t.Fatalf("%d refreshes for %d authorizers in 14 s: more than one refresher", total.Refreshes, len(ids))
	}
	t.Logf("%d requests served across reloads, %d refreshes, %d connections reset by the reload (retried)", served, total.Refreshes, redials)
}
