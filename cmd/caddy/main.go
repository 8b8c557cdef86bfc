// Command caddy is the production build: Caddy with its standard modules and
// tptoken, without the platform emulator (a test fixture that reveals every
// secret it issues). `go build ./cmd/caddy` makes it without xcaddy; the
// Dockerfile and docs/deployment.md build the same set of modules with xcaddy.
// The sandbox, the demo and the load benchmarks use ./cmd/caddy-sandbox.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/tptoken/caddy-tptoken"
)

func main() {
	caddycmd.Main()
}
