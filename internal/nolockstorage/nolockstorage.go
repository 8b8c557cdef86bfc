// Package nolockstorage is a test fixture: the Caddy storage module
// caddy.storage.tptoken_test_nolock, Caddy's file system storage whose Lock
// and Unlock do nothing. Instances sharing it share records but exclude
// nothing, which is what a storage without a working lock does; the fault
// tests use it to show that their checks fail without the storage lock. It
// is never part of a product build (faulttest/cmd/caddy-nolock only).
package nolockstorage

import (
	"context"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
)

func init() { caddy.RegisterModule(Storage{}) }

// Storage is the module: `storage tptoken_test_nolock <root>`.
type Storage struct {
	Root string `json:"root,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Storage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "caddy.storage.tptoken_test_nolock", New: func() caddy.Module { return new(Storage) }}
}

// CertMagicStorage is a FileStorage at Root whose locks exclude nothing.
func (s Storage) CertMagicStorage() (certmagic.Storage, error) {
	return noLock{&certmagic.FileStorage{Path: s.Root}}, nil
}

// UnmarshalCaddyfile reads `tptoken_test_nolock <root>`.
func (s *Storage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if !d.Args(&s.Root) || d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

type noLock struct{ *certmagic.FileStorage }

func (noLock) Lock(context.Context, string) error   { return nil }
func (noLock) Unlock(context.Context, string) error { return nil }

// Interface guards
var (
	_ caddy.StorageConverter = Storage{}
	_ caddyfile.Unmarshaler  = (*Storage)(nil)
)
