package tptoken

import (
	"fmt"
	"slices"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// unmarshalApp parses one `app` block of a tptoken global option and adds it
// to prev:
//
//	app <appid> {                                    # appid = client_key; a placeholder is resolved at provision
//		secret         <secret>                      # required; {env.X} / {file.X}
//		tokens         client_token app_access_token # required: the kinds tptoken keeps (nothing else may fetch them)
//		endpoint       <kind> <url>                  # per kind; defaults https://open.douyin.com (client_token),
//		                                             # https://developer.toutiao.com (app_access_token; mini-games:
//		                                             # https://minigame.zijieapi.com/mgplatform)
//		refresh_ahead  <duration>                    # default 10m (at most half the token's life)
//		grace          <duration>                    # the platform keeps the previous token this long; default 5m
//		encryption_key <key>                         # optional: AES-256-GCM for the stored tokens
//		previous_encryption_keys <key>...            # earlier keys, still read
//		timeout        <duration>                    # one platform call; default 10s
//		lock_timeout   <duration>                    # wait for the storage lock; default 15s
//		single_instance                              # fetch without the storage lock if storage locking fails
//	}
func unmarshalApp(d *caddyfile.Dispenser, prev *App) error {
	c := &AppCredential{}
	line := d.Line()
	if !d.NextArg() {
		return d.Errf("app: want the app's appid (client_key): app <appid> { secret ... tokens ... }")
	}
	c.AppID = d.Val()
	if err := checkAppIDAt(d, "app", c.AppID); err != nil {
		return err
	}
	if d.NextArg() {
		return d.Errf("app: want one appid, got more (%q); put the options in a block", d.Val())
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] && name != "endpoint" {
			return d.Errf("app %s: %s is set twice", c.AppID, name)
		}
		seen[name] = true
		var err error
		switch name {
		case "secret":
			err = oneArg(d, &c.Secret)
		case "tokens":
			c.Tokens = d.RemainingArgs()
			err = at(d, checkAppTokens(c.Tokens))
		case "endpoint":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("endpoint: want <kind> <url> (such as endpoint client_token https://open.douyin.com), got %d arguments", len(args))
			}
			if _, dup := c.Endpoints[args[0]]; dup {
				return d.Errf("app %s: the endpoint of %s is set twice", c.AppID, args[0])
			}
			if c.Endpoints == nil {
				c.Endpoints = map[string]string{}
			}
			c.Endpoints[args[0]] = args[1]
			err = at(d, checkAppEndpoint(args[0], args[1], appKinds))
		case "refresh_ahead":
			err = durationArg(d, &c.RefreshAhead)
		case "grace":
			err = durationArg(d, &c.Grace)
		case "encryption_key":
			err = encryptionKeyArg(d, &c.EncryptionKey)
		case "previous_encryption_keys":
			err = previousKeysArgs(d, &c.PreviousEncryptionKeys)
		case "timeout":
			err = durationArg(d, &c.Timeout)
		case "lock_timeout":
			err = durationArg(d, &c.LockTimeout)
		case "single_instance":
			err = flagArg(d, &c.SingleInstance)
		default:
			return d.Errf("app %s: unknown option %q", c.AppID, name)
		}
		if err != nil {
			return err
		}
	}
	if c.Secret == "" {
		return fmt.Errorf("%v, at %s:%d", errAppRequired, d.File(), line)
	}
	if err := c.check(); err != nil {
		return fmt.Errorf("app %s: %v, at %s:%d", c.AppID, err, d.File(), line)
	}
	for _, o := range prev.AppCredentials {
		for _, kind := range c.Tokens {
			if o.AppID == c.AppID && slices.Contains(o.Tokens, kind) {
				return fmt.Errorf("%v, at %s:%d", duplicateAppToken(c.AppID, kind), d.File(), line)
			}
		}
	}
	prev.AppCredentials = append(prev.AppCredentials, c)
	return nil
}
