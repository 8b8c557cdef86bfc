package tokensource_test

import (
	"context"
	"testing"

	"github.com/tptoken/caddy-tptoken/emulator"
	"github.com/tptoken/caddy-tptoken/tokensource"
)

func TestNoSecretInAnyLogLine(t *testing.T) {
	forEachFamily(t, func(t *testing.T, h *harness) {
		e := h.engine()
		h.authorize(e, "tt01app")
		h.expire()
		_ = h.emu.SetFaults(emulator.OpRefresh, emulator.Faults{DropResponse: 1})
		if _, err := e.Token(context.Background(), "tt01app"); err != nil {
			t.Fatal(err)
		}
		_ = h.emu.Unauthorize("tt01app", false)
		h.expire()
		_, _ = e.Token(context.Background(), "tt01app")
		code, _ := h.emu.Authorize("tt02app", false)
		_, _ = e.ExchangeCode(context.Background(), "", tokensource.Secret(code))
		_, _ = e.ExchangeCode(context.Background(), "tt02app", tokensource.Secret(code)) // used code
		h.assertNoSecretsLogged()
	})
}
