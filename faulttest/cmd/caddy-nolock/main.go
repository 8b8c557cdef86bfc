// Command caddy-nolock is the fault tests' Caddy with a storage whose lock
// excludes nothing (internal/nolockstorage): the proof that the cluster
// checks fail without the storage lock. A test fixture, never a product build.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/tptoken/caddy-tptoken"
	_ "github.com/tptoken/caddy-tptoken/internal/nolockstorage"
)

func main() {
	caddycmd.Main()
}
