#!/usr/bin/env bash
# check-deployment.sh: runs the commands of docs/deployment.md that this
# machine can run, as CI does (.ci/run):
#
#   1. the production build (./cmd/caddy): tptoken in, the emulator out;
#   2. a storage key made as the guide says, and Caddyfile.example adapted (no
#      secret in the JSON) and validated with it, without a warning;
#   3. the systemd unit, with systemd-analyze verify (when systemd is there);
#   4. the Dockerfile's builder stage: its ENV, COPY and RUN steps run here,
#      with the same xcaddy and Caddy v2.11.9 (there is no Docker engine in
#      CI; SKIP_DOCKERFILE=1 skips this step, the slow one);
#   5. the Prometheus rules: promtool check rules and promtool test rules.
#
# Each step says what it checks; any failure stops the script.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
export PATH="$("$GO" env GOPATH)/bin:$PATH"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
step() { printf '\n==> %s (%ds)\n' "$1" "$SECONDS"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

step "1. production build: go build -o caddy ./cmd/caddy"
"$GO" build -o "$OUT/caddy" ./cmd/caddy
modules=$("$OUT/caddy" list-modules)
for m in tptoken http.handlers.tptoken http.handlers.tptoken_events http.reverse_proxy.transport.tptoken admin.api.tptoken; do
	grep -qx "$m" <<<"$modules" || fail "the production build lacks $m"
done
! grep -q tptoken_emulator <<<"$modules" || fail "the production build carries the platform emulator"
echo "tptoken modules in, emulator out"

step "2. storage key and Caddyfile.example"
command -v openssl >/dev/null || fail "openssl is needed (apt-get install openssl)"
TP_STORAGE_KEY=$(openssl rand -base64 32) # docs/deployment.md, Secrets
[ "${#TP_STORAGE_KEY}" = 44 ] || fail "openssl rand -base64 32 gave ${#TP_STORAGE_KEY} characters, want 44"
export TP_STORAGE_KEY
export TP_COMPONENT_APPID=tt00deploycheck TP_COMPONENT_APPSECRET=check-appsecret-value-0042 TP_MESSAGE_TOKEN=check-message-token-0042
export TP_ENCODING_AES_KEY=jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C
# The example writes to /var/lib/caddy and /var/log/caddy: point them here.
sed "s|/var/lib/caddy|$OUT/storage|; s|/var/log/caddy|$OUT/log|" Caddyfile.example >"$OUT/Caddyfile"
"$OUT/caddy" adapt --config "$OUT/Caddyfile" >"$OUT/adapted.json" 2>"$OUT/adapt.log" || { cat "$OUT/adapt.log"; fail "caddy adapt"; }
for v in "$TP_STORAGE_KEY" "$TP_COMPONENT_APPSECRET" "$TP_MESSAGE_TOKEN" "$TP_ENCODING_AES_KEY"; do
	! grep -qF -- "$v" "$OUT/adapted.json" || fail "the adapted JSON holds a secret"
done
grep -qF '{env.TP_STORAGE_KEY}' "$OUT/adapted.json" || fail "the adapted JSON lost the {env.TP_STORAGE_KEY} placeholder"
"$OUT/caddy" validate --config "$OUT/Caddyfile" >"$OUT/validate.log" 2>&1 || { cat "$OUT/validate.log"; fail "caddy validate"; }
if grep '"logger":"tptoken"' "$OUT/validate.log" | grep -q '"level":"warn"'; then
	grep '"logger":"tptoken"' "$OUT/validate.log"
	fail "Caddyfile.example draws a tptoken warning"
fi
echo "key of 44 characters; adapted JSON holds no secret; valid, no warning"

step "3. systemd unit: systemd-analyze verify deploy/caddy-tptoken.service"
if command -v systemd-analyze >/dev/null; then
	mkdir -p "$OUT/unit"
	# The binary and the secrets file as the unit names them, here.
	sed "s|/usr/bin/caddy|$OUT/caddy|g; s|/etc/caddy/tptoken.env|$OUT/unit/tptoken.env|" deploy/caddy-tptoken.service >"$OUT/unit/caddy-tptoken.service"
	touch "$OUT/unit/tptoken.env"
	if ! verify=$(systemd-analyze verify "$OUT/unit/caddy-tptoken.service" 2>&1) || [ -n "$verify" ]; then
		echo "$verify"
		fail "systemd-analyze verify"
	fi
	echo "verified"
else
	echo "skipped: systemd-analyze is not installed (apt-get install systemd)"
fi

step "4. Dockerfile builder stage (deploy/Dockerfile), its steps run outside Docker"
if [ "${SKIP_DOCKERFILE:-}" = 1 ]; then
	echo "skipped (SKIP_DOCKERFILE=1)"
else
	command -v xcaddy >/dev/null || "$GO" install github.com/caddyserver/xcaddy/cmd/xcaddy@v0.4.5
	# The image's paths, mapped here: the checkout is copied to /src/caddy-tptoken,
	# the binary goes to /usr/bin/caddy.
	src="$PWD" bin="$OUT/docker-caddy"
	grep -q '^FROM caddy:2.11.9-builder AS builder$' deploy/Dockerfile || fail "the builder stage is not caddy:2.11.9-builder"
	grep -q '^FROM caddy:2.11.9$' deploy/Dockerfile || fail "the final stage is not caddy:2.11.9"
	# One instruction per line (continuations joined), builder stage only.
	awk '/^FROM .* AS builder$/ {on=1; next} /^FROM / {on=0} on' deploy/Dockerfile |
		sed -e ':a' -e '/\\$/N; s/\\\n//; ta' | grep -Ev '^[[:space:]]*(#|$)' >"$OUT/steps"
	while IFS= read -r line; do
		case "$line" in
		ENV\ *)
			kv=${line#ENV }
			echo "ENV $kv"
			export "${kv%%=*}=${kv#*=}"
			;;
		"COPY . /src/caddy-tptoken")
			echo "COPY (the checkout is used in place)"
			;;
		RUN\ *)
			cmd=${line#RUN }
			cmd=${cmd//\/src\/caddy-tptoken/$src}
			cmd=${cmd//\/usr\/bin\/caddy/$bin}
			echo "RUN $cmd"
			(cd "$OUT" && bash -euo pipefail -c "$cmd") || fail "Dockerfile step: $line"
			;;
		*) fail "the check does not know how to run this Dockerfile step: $line" ;;
		esac
	done <"$OUT/steps"
	"$bin" version | grep -q '^v2\.11\.9' || fail "the Dockerfile's build is not Caddy v2.11.9: $("$bin" version)"
	echo "built $("$bin" version | cut -d' ' -f1) with tptoken, without the emulator"
fi

step "5. Prometheus rules: promtool check rules, promtool test rules"
if command -v promtool >/dev/null; then
	promtool check rules deploy/prometheus/tptoken.rules.yml
	(cd deploy/prometheus && promtool test rules tptoken.rules.test.yml)
else
	fail "promtool is missing (apt-get install prometheus)"
fi

step "done"
