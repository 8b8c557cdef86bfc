#!/usr/bin/env bash
# run-demo.sh: build Caddy with tptoken, start examples/sandbox.Caddyfile (the
# platform emulator, tptoken in front of it, tptoken_events receiving the
# pushes), wait until tokens are injected end to end, show it with curl, and
# keep Caddy running until Ctrl-C.
#
#	scripts/run-demo.sh          # what `make run` does
#	scripts/run-demo.sh --check  # the same, then stop (exit status 0 = the demo works)
#
# Only Go is needed (curl is used when present; bash's /dev/tcp otherwise).
# Every secret is a demo value set below unless already in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
case "${1:-}" in
--check) check=1 ;;
"") ;;
*) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

export PATH="$PATH:/usr/local/go/bin"
GO=${GO:-go}
command -v "$GO" >/dev/null || { echo "Go is missing: install Go 1.26 (https://go.dev/dl/)" >&2; exit 1; }

# Demo secrets: made up for the sandbox, known to the emulator and to tptoken
# alike. Never put real ones in a file; give them to Caddy as {env.*}.
export SANDBOX_TP1_APPSECRET=${SANDBOX_TP1_APPSECRET:-sandbox-tp1-appsecret}
export SANDBOX_TP1_MESSAGE_TOKEN=${SANDBOX_TP1_MESSAGE_TOKEN:-sandbox-tp1-message-token}
export SANDBOX_TP1_ENCODING_AES_KEY=${SANDBOX_TP1_ENCODING_AES_KEY:-F5qdpIUZpxkEsbzEMM4jhomFInN2FTaOOK7SAl6sEuU}
export SANDBOX_TP2_APPSECRET=${SANDBOX_TP2_APPSECRET:-sandbox-tp2-appsecret}
export SANDBOX_TP2_MESSAGE_TOKEN=${SANDBOX_TP2_MESSAGE_TOKEN:-sandbox-tp2-message-token}
export SANDBOX_TP2_ENCODING_AES_KEY=${SANDBOX_TP2_ENCODING_AES_KEY:-KYsc9J0HyFTX0dkUEIQIJMfSme3xHKT5gxwQR2m2szc}
export SANDBOX_APP_SECRET=${SANDBOX_APP_SECRET:-sandbox-app-secret}
export SANDBOX_STORAGE_KEY=${SANDBOX_STORAGE_KEY:-dbeaed43481a64ade3fd44d5720d67e5d53a02b40a404d6e5d69ce1e37f13467}

V1=http://127.0.0.1:8081
V2=http://127.0.0.1:8082
# The appid goes where the token used to go: v1 query authorizer_access_token,
# v2 header access-token.
V1_API="$V1/openapi/v1/microapp/app/info?hello=world&authorizer_access_token=tt0000demo01"
V2_API=$V2/api/apps/v2/basic_info/get_info/
HDR2='access-token: tt0000demo02'
V1_LIST="$V1/openapi/v1/tp/auth_app_list?page=1&size=10"
V1_NOBODY="$V1/openapi/v1/microapp/app/info?authorizer_access_token=tt0000nobody"
APP_API=$V2/app/api/apps/v1/qrcode/create/

# get URL [HEADER]: the body of a GET, or a failure.
get() {
	local url=$1 header=${2:-}
	if command -v curl >/dev/null; then
		curl -sS --max-time 5 ${header:+-H "$header"} "$url"
		return
	fi
	local rest=${url#http://}
	local hostport=${rest%%/*}
	local path=/${rest#*/}
	[ "$rest" = "$hostport" ] && path=/
	exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" || return 1
	printf 'GET %s HTTP/1.0\r\nHost: %s\r\n%s\r\n' "$path" "$hostport" "${header:+$header$'\r\n'}" >&3
	sed '1,/^\r$/d' <&3
	exec 3<&-
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

echo "==> building Caddy with tptoken and the emulator (go build -o bin/caddy-sandbox ./cmd/caddy-sandbox)"
"$GO" build -o bin/caddy-sandbox ./cmd/caddy-sandbox

for p in 2019 8081 8082 8090 8091 8092; do
	if port_in_use "$p"; then
		echo "port $p on 127.0.0.1 is in use: the sandbox needs 2019 (admin), 8081, 8082, 8090, 8091 and 8092" >&2
		exit 1
	fi
done

# The emulator keeps its platform state in memory only, so each run starts
# from empty storage too (old records would name tokens it never issued).
rm -rf .sandbox/storage
mkdir -p .sandbox
printf '*\n' >.sandbox/.gitignore # the sandbox's records and log stay out of git
log=.sandbox/caddy.log

echo "==> starting the sandbox (examples/sandbox.Caddyfile; log: $log)"
bin/caddy-sandbox run --adapter caddyfile --config examples/sandbox.Caddyfile >"$log" 2>&1 &
caddy_pid=$!
stop() {
	if kill -0 "$caddy_pid" 2>/dev/null; then
		kill "$caddy_pid" 2>/dev/null || true
		wait "$caddy_pid" 2>/dev/null || true
	fi
}
trap stop EXIT
trap 'exit 130' INT TERM

# Ready when each family's demo authorizer gets its token injected: the
# emulators have pushed a ticket and an AUTHORIZED event, and tptoken has
# exchanged the codes.
wait_for() { # URL HEADER APPID
	local deadline=$((SECONDS + 60)) out=""
	while ((SECONDS < deadline)); do
		if ! kill -0 "$caddy_pid" 2>/dev/null; then
			echo "Caddy exited; the end of $log:" >&2
			tail -n 30 "$log" >&2
			exit 1
		fi
		out=$(get "$1" "$2" 2>/dev/null || true)
		case "$out" in *"\"data\":{\"appid\":\"$3\""*) return 0 ;; esac
		sleep 0.5
	done
	echo "not ready after 60 s; last answer: $out" >&2
	echo "the end of $log:" >&2
	tail -n 30 "$log" >&2
	exit 1
}
wait_for "$V1_API" "" tt0000demo01
wait_for "$V2_API" "$HDR2" tt0000demo02
wait_for "$APP_API" "" tt0000demoapp1

show() { # URL [HEADER]
	echo
	echo "\$ curl -s ${2:+-H '$2' }'$1'"
	get "$@"
	echo
}

cat <<EOF

==> the sandbox is up. A legacy app sends the authorizer appid where the token
    used to go; tptoken puts the token there and the emulator's sample API
    answers with the appid that owns the token it received (token values show
    as ***).
EOF
echo
echo "v1 (query authorizer_access_token: the appid replaced by its token, component_appid added):"
show "$V1_API"
echo
echo "v2 (header access-token: the appid replaced by its token):"
show "$V2_API" "$HDR2"
echo
echo "a TP-level API gets the component token:"
show "$V1_LIST"
echo
echo "an app's own client_token (token client_token; tptoken fetched it once, for every instance):"
show "$APP_API"
echo
echo "an appid that never authorized gets a clear error in the v1 envelope, HTTP 200 as the platform answers"
echo "(a value tptoken has no record of is named by its fingerprint: it could be a token):"
show "$V1_NOBODY"

cat <<EOF

Try more:
  authorize another mini-app (the emulator pushes AUTHORIZED to tptoken_events):
    curl -s -X POST -d '{"appid":"tt0000demo03","push":true}' http://127.0.0.1:8091/_emulator/authorize
    curl -s '$V1/openapi/v1/microapp/app/info?authorizer_access_token=tt0000demo03'
  make the platform drop the current token (tptoken refreshes and replays once):
    curl -s -X POST -d '{"appid":"tt0000demo01","family":"v1"}' http://127.0.0.1:8091/_emulator/revoke
  make the platform drop the app's client_token (tptoken fetches a new one and replays once):
    curl -s -X POST http://127.0.0.1:8092/_emulator/apps/tt0000demoapp1/client_token/revoke
  the app tokens' state (never the token):
    bin/caddy-sandbox tptoken apps
  what the platform saw:
    curl -s http://127.0.0.1:8091/_emulator/stats
EOF

if [ "$check" = 1 ]; then
	echo
	echo "==> demo check passed; stopping Caddy"
	exit 0
fi
echo
echo "==> Caddy is running (log: $log). Press Ctrl-C to stop."
wait "$caddy_pid"
