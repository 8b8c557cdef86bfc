package tptoken

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/tptoken/caddy-tptoken/emulator"
)

// discardWriter is a reusable response writer: what Caddy writes is dropped.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(code int)        { w.status = code }

// BenchmarkCaddyRequest is one request through a real Caddy server (loaded
// in-process), called directly (no client connection), with a loopback
// upstream answering small JSON: plain reverse_proxy against tptoken +
// reverse_proxy { transport tptoken }, with and without replay inspection.
// The difference between the cases is what the plugin costs a request inside
// Caddy: the route's extra handler, the per-request replacer and vars entries
// (map growth included), the transport's copy and injection, and the garbage
// collector's share of all of it.
func BenchmarkCaddyRequest(b *testing.B) {
	answer := `{"errno":0,"message":"success","data":{"appid":"tt0000bench01","name":"bench","status":1,"ts":1764057600}}`
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = []string{"application/json"}
		w.Header()["Content-Length"] = []string{strconv.Itoa(len(answer))}
		_, _ = w.Write([]byte(answer))
	}))
	defer up.Close()
	emu, err := emulator.New(emulator.Config{ComponentAppID: e2eComponent, ComponentAppSecret: e2eSecret,
		MessageToken: e2eMsgToken, EncodingAESKey: e2eAESKey})
	if err != nil {
		b.Fatal(err)
	}
	defer emu.Close()
	emuSrv := httptest.NewServer(emu)
	defer emuSrv.Close()

	ports := make([]int, 4)
	for i := range ports {
		ports[i] = freePort(b)
	}
	upstream := strings.TrimPrefix(up.URL, "http://")
	cfg := fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
	storage file_system %s
	log {
		level ERROR
	}
	tptoken {
		component_appid %s
		component_appsecret %s
		message_token %s
		encoding_aes_key %s
		endpoint %s
	}
}
http://127.0.0.1:%d {
	reverse_proxy %s
}
http://127.0.0.1:%d {
	tptoken {
		max_replay_body off
	}
	reverse_proxy %s {
		transport tptoken
	}
}
http://127.0.0.1:%d {
	tptoken
	reverse_proxy %s {
		transport tptoken
	}
}
http://127.0.0.1:%d {
	tptoken_events
}
`, b.TempDir(), e2eComponent, e2eSecret, e2eMsgToken, e2eAESKey, emuSrv.URL,
		ports[0], upstream, ports[1], upstream, ports[2], upstream, ports[3])
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		b.Fatal(err)
	}
	if err := caddy.Load(adapted, true); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = caddy.Stop() }()
	if err := emu.SetPushURL(fmt.Sprintf("http://127.0.0.1:%d/", ports[3])); err != nil {
		b.Fatal(err)
	}
	if err := emu.PushTicket(context.Background()); err != nil {
		b.Fatal(err)
	}
	if _, err := emu.Authorize("tt0000bench01", true); err != nil {
		b.Fatal(err)
	}
	app, err := caddy.ActiveContext().App("http")
	if err != nil {
		b.Fatal(err)
	}
	servers := map[int]*caddyhttp.Server{}
	for _, s := range app.(*caddyhttp.App).Servers {
		for _, l := range s.Listen {
			for i, p := range ports {
				if strings.HasSuffix(l, ":"+strconv.Itoa(p)) {
					servers[i] = s
				}
			}
		}
	}
	for i, name := range []string{"plain_reverse_proxy", "tptoken_replay_off", "tptoken_replay_on"} {
		b.Run(name, func(b *testing.B) {
			srv := servers[i]
			host := "127.0.0.1:" + strconv.Itoa(ports[i])
			w := &discardWriter{h: http.Header{}}
			serve := func() {
				r := httptest.NewRequest(http.MethodGet, "http://"+host+"/openapi/v1/microapp/app/info?page=1&page_size=20", nil)
				r.RemoteAddr = "127.0.0.1:40000"
				r.Header.Set("X-Authorizer-Appid", "tt0000bench01")
				clear(w.h)
				w.status = 0
				srv.ServeHTTP(w, r)
				if w.status != http.StatusOK && w.status != 0 {
					b.Fatalf("status %d", w.status)
				}
			}
			serve()
			time.Sleep(10 * time.Millisecond)
			b.ReportAllocs()
			for b.Loop() {
				serve()
			}
		})
	}
}
