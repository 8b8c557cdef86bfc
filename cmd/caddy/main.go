// Command caddy is Caddy with the standard modules, tptoken and its platform emulator.
// It lets `go build ./cmd/caddy` produce a working binary without xcaddy.
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
