// Package tokensource is the token engine of tptoken: it gives any caller a valid
// authorizer_access_token (or component_access_token) of the Douyin / ByteDance
// open platform for an authorizer appid, exchanging codes, refreshing ahead of
// need and recovering lost authorizations, for one TP (component appid) and one
// token family.
//
// Its invariant: a refresh token is used at most once. The platform's refresh
// token is single-use and rotated, and a second concurrent refresh loses the
// authorizer, so every use of a refresh token happens under an in-process
// single-flight AND the storage lock, after reloading the stored record, and the
// rotated pair is stored before the lock is released or the new token is used.
//
// The package knows nothing of Caddy: it takes a Store (certmagic.Storage
// satisfies it), the platform's address and the TP's credentials, a clock and
// a zap logger. A caller needs Token and Invalidate (ComponentToken and
// InvalidateComponent for TP-level APIs), HandlePush for the platform's pushes
// (opened by package push), and Run for the background work. An app's own
// token (no TP involved) has an AppSource of the same shape: fetched at most
// once per generation across the instances sharing the Store.
//
// Where things are:
//
//	policy.go     every timing decision: when a token is fresh, usable or due,
//	              background leads, settled errors, backoff, rejection and
//	              forced-operation budgets, defaults ("when does a refresh happen?")
//	refresh.go    the refresh path: obtain (reload, lock, reload, re-check,
//	              renew, store), refresh, recovery, failures
//	pushes.go     what a push does to state: HandlePush, the replay window,
//	              tickets, revocations ("how does a push change state?")
//	exchange.go   code exchange and the index of exchanged codes
//	engine.go     Engine, New, Token (the request path), the in-memory slots
//	base.go       what every token source runs on: store, codec, clock,
//	              single-flight, platform call slots, retries, lifecycle
//	single.go     one stored token without a refresh token, fetched under the
//	              cluster lock: the component token, an app's own token
//	appsource.go  AppSource: an app's own access_token or client_token (a
//	              single token), NewAppSource, AppConfig, AppInfo
//	appclient.go  the app token endpoints, their codes (one HTTP call each)
//	config.go     Config and its defaults
//	component.go  the component token and the ticket it is fetched with
//	maintain.go   Run: the background loop (maintain, sweep)
//	reject.go     Invalidate, ReportGone: what a downstream rejection, or an
//	              answer saying the authorization is gone, may cause
//	redirect.go   exchanges started by the authorization redirect, budgeted
//	authlink.go   authorization links
//	operator.go   operator actions: Info, List, Refresh, Recover, Forget,
//	              Import, ComponentInfo
//	reseal.go     Reseal: re-sealing every record with the current key
//	rebuild.go    Rebuild: every authorizer without a usable record restored
//	              from the platform's authorized-app list (retrieve + exchange)
//	autorebuild.go  rebuild_on_empty: a marker and a lease, once per cluster
//	writeback.go  memory as a backup of storage: token chains, write-backs,
//	              the marker of a deleted record
//	record.go     the authorizer record, its storage form, Info
//	store.go      Store, LockBreaker and the storage keys
//	codec.go      sealing records at rest (AES-256-GCM, key rotation)
//	lock.go       the in-process and storage locks
//	client.go     the platform's token API (one HTTP call per method)
//	errors.go     PlatformError, the code table, Error and Kind
//	family.go     token families (v1, v2): default endpoints, TP-level paths
//	appid.go      appid validation
//	tags.go       causes, and appids not confirmed yet (kept out of logs)
//	observer.go   Observer: hooks for metrics
//	recent.go     bounded memories of untrusted input
//	secret.go     Secret (package secret), redacted however printed
//	logfields.go  log field helpers
package tokensource
