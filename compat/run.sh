#!/usr/bin/env bash
# compat/run.sh: the official Douyin open-API SDK for Node.js
# (@open-dy/open_api_sdk, pinned in compat/package.json), unmodified, against
# tptoken serving the platform's host names over HTTPS. `make test-compat`.
#
#	compat/run.sh                          # the suite; exit status 0 = it passed
#
# Steps: npm ci in compat/; verify-install.sh proves the installed SDK and its
# dependencies byte-identical to the published tarballs; go build Caddy; then,
# in a private network + mount namespace (unshare, as root), bring lo up,
# bind-mount a generated hosts file over /etc/hosts that sends the platform's
# hosts to loopback addresses, start Caddy with compat/Caddyfile (tls internal, the
# emulators on loopback ports) and run the node:test suite in compat/test/
# with Caddy's root certificate trusted through NODE_EXTRA_CA_CERTS only.
# Nothing outside the namespace sees the names, the ports or the mounts.
#
# Needs: root, unshare and mount (util-linux), ip (iproute2), Go, Node >= 18, npm.
set -euo pipefail
cd "$(dirname "$0")/.."

# The platform hosts the sidecar stands in for, and the loopback address each
# resolves to inside the namespace (compat/Caddyfile binds them so).
HOSTS="127.0.0.1 open.douyin.com
127.0.0.1 open.microapp.bytedance.com
127.0.0.1 webcast.bytedance.com
127.0.0.1 minigame.zijieapi.com
127.0.0.2 developer.toutiao.com"

# inside WORK: the part that runs in the private namespaces.
inside() {
	local work=$1
	ip link set lo up
	mount --bind "$work/hosts" /etc/hosts
	local ip h
	while read -r ip h; do
		case "$(getent hosts "$h")" in "$ip "*) ;; *)
			echo "compat: $h does not resolve to $ip inside the namespace" >&2
			exit 1
			;;
		esac
	done <<<"$HOSTS"

	COMPAT_WORK=$work bin/caddy-sandbox run --adapter caddyfile --config compat/Caddyfile >"$work/caddy.log" 2>&1 &
	local caddy_pid=$!
	# shellcheck disable=SC2064
	trap "kill $caddy_pid 2>/dev/null || true; wait $caddy_pid 2>/dev/null || true" EXIT

	# Caddy's CA root appears in its storage once the internal issuer is set up.
	local root=$work/storage/pki/authorities/local/root.crt deadline=$((SECONDS + 60))
	until [ -s "$root" ] && (exec 3<>/dev/tcp/127.0.0.1/443) 2>/dev/null; do
		if ! kill -0 "$caddy_pid" 2>/dev/null || ((SECONDS > deadline)); then
			echo "compat: Caddy did not come up; the end of its log:" >&2
			tail -n 40 "$work/caddy.log" >&2
			exit 1
		fi
		sleep 0.2
	done

	local status=0
	(cd compat && COMPAT_CADDY_LOG=$work/caddy.log NODE_EXTRA_CA_CERTS=$root node --test test/sdk.test.js) || status=$?
	if [ "$status" != 0 ]; then
		echo "compat: the suite failed; the end of Caddy's log ($work/caddy.log):" >&2
		tail -n 40 "$work/caddy.log" >&2
	fi
	return "$status"
}

if [ "${1:-}" = "--inside" ]; then
	inside "$2"
	exit
fi

fail() { echo "compat: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root: it makes a private network and mount namespace (unshare --net --mount)"
for c in unshare mount ip getent node npm; do
	command -v "$c" >/dev/null || fail "$c is missing (Debian: apt-get install util-linux mount iproute2 libc-bin nodejs npm)"
done
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' ||
	fail "Node $(node --version) is too old: node:test needs Node 18 or later"
export PATH="$PATH:/usr/local/go/bin"
GO=${GO:-go}
command -v "$GO" >/dev/null || fail "Go is missing"

echo "==> npm ci (compat/package-lock.json)"
(cd compat && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)

echo "==> the installed SDK is the published one"
compat/verify-install.sh

echo "==> go build -o bin/caddy-sandbox ./cmd/caddy-sandbox"
"$GO" build -o bin/caddy-sandbox ./cmd/caddy-sandbox

work=$(mktemp -d /tmp/tptoken-compat.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
{
	echo "127.0.0.1 localhost"
	echo "::1 localhost"
	echo "$HOSTS"
} >"$work/hosts"

# Demo secrets, fresh for each run, known to the emulators and to tptoken alike.
key() { head -c 32 /dev/urandom | base64 | tr -d '=\n'; }
export COMPAT_TP1_APPSECRET="compat-tp1-$RANDOM$RANDOM" COMPAT_TP1_MESSAGE_TOKEN="compat-tp1-msg" COMPAT_TP1_ENCODING_AES_KEY=$(key)
export COMPAT_TP2_APPSECRET="compat-tp2-$RANDOM$RANDOM" COMPAT_TP2_MESSAGE_TOKEN="compat-tp2-msg" COMPAT_TP2_ENCODING_AES_KEY=$(key)

echo "==> the suite, inside a private network and mount namespace"
status=0
unshare --net --mount --fork -- bash "$0" --inside "$work" || status=$?
if [ "$status" != 0 ]; then
	trap - EXIT
	echo "compat: failed; Caddy's log and storage (emulated tokens only) are kept in $work" >&2
fi
exit "$status"
