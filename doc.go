// Package tptoken is a Caddy v2 plugin for service providers (服务商) on the
// Douyin / ByteDance open platform: legacy apps send open-API requests through
// Caddy naming an authorizer appid, and tptoken injects a valid
// authorizer_access_token (or component token) before reverse_proxy forwards them.
//
// The token engine lives in package tokensource; this package is the Caddy glue:
// the `tptoken` app (one engine per component appid, and one source per app's
// own token, surviving config reloads),
// the `tptoken` handler, the `tptoken` reverse_proxy transport that puts the
// token on the outgoing request only, and the `tptoken_events` push receiver.
//
// Where things are:
//
//	app.go             the tptoken app: Component, the engine pool and its key, Start/Stop/Cleanup
//	app_credentials.go apps' own tokens (app blocks): AppCredential, their token sources and pool
//	handler.go         the tptoken handler: appid carriers, ServeHTTP, the failure envelope
//	handler_apps.go    routes injecting an app's own token: which app, where it goes (inject)
//	tokenslot.go       the appid where the token goes (appid token): read, every copy removed
//	loop.go            request loops: the hop mark in Via, the start-up check of the upstreams
//	tptoken_proxy.go   the tptoken_proxy directive: the handler and reverse_proxy in one route
//	transport.go       the tptoken transport: the token on the outgoing request, the replay
//	transport_apps.go  an app token in a header, the query or a JSON body; its rejection codes
//	inspect.go         answers that reject the token sent, or say its authorization is gone
//	replaybuffer.go    request bodies kept for a replay, within max_replay_memory
//	query.go           the query edited as bytes: carriers and v1 credentials
//	redact.go          the token removed from answer headers
//	routecheck.go      no request leaves without its token (config check, request guard)
//	events.go          the tptoken_events handler: pushes and authorization redirects
//	events_refusals.go what tptoken_events refuses: counted, logged sampled
//	authstate.go       the signed state of authorization links
//	validate.go        the rule of each option value, one function each (validate_apps.go: app credentials)
//	secrets.go         secret placeholders resolved; warnings about risky set-ups
//	caddyfile.go       the Caddyfile syntax (parsing only; the rules are validate.go's; caddyfile_apps.go: app blocks)
//	storage.go         the storage an engine uses across configs
//	storagecheck*.go   check-storage: the storage's guarantees, and the lock holder process
//	metrics.go         Prometheus metrics (metrics_apps.go: apps' own tokens)
//	admin*.go          the admin API (admin.api.tptoken); admin_rebuild.go also the NDJSON streams
//	command*.go        the `caddy tptoken` CLI
//	progress.go        the progress line of long commands (import, rebuild)
package tptoken
