// Command caddy-sandbox is Caddy with the standard modules, tptoken and its
// platform emulator (http.handlers.tptoken_emulator): for `make run`, the demo,
// the load benchmarks and testing legacy apps against the emulator. Never run
// it in production: the emulator's control surface reveals every secret it
// issued. Production uses ./cmd/caddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/tptoken/caddy-tptoken"
	_ "github.com/tptoken/caddy-tptoken/emulator"
)

func main() {
	caddycmd.Main()
}
