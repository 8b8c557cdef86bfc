#!/usr/bin/env bash
# bench-scale.sh: tptoken at 10,000-100,000 authorizers (what `make bench-scale`
# runs). Two parts:
#
# 1. Go tests at full size (TPTOKEN_SCALE=1; the normal suite runs them small):
#    10,000 cold authorizers at once (platform calls capped at
#    max_concurrent_calls, one refresh each), 100,000 records due for renewal
#    (renewals at renew_rate, no burst at start-up), start-up with 100,000
#    records (no record read until one is asked for), heap per cached
#    authorizer (100,000 cached); and 1,000 concurrent requests on a cold
#    authorizer through a real Caddy (one refresh, p50/p99 against a warm burst).
# 2. Caddy (bin/caddy) started STARTS times on a storage folder holding one
#    authorizer record and on one holding RECORDS: the time from launching the
#    process to the first request served with a stored token, and the resident
#    memory then; and once more on the large folder until the first sweep of
#    storage has read every record (its duration and the memory after it).
#
# Settings (environment): RECORDS=100000 STARTS=5 BASE_PORT=18580
# OUT=.bench/scale-<time> SKIP_GO=1 (only part 2) SKIP_CADDY=1 (only part 1) GO=go
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-100000}
STARTS=${STARTS:-5}
BASE_PORT=${BASE_PORT:-18580}
SKIP_GO=${SKIP_GO:-0}
SKIP_CADDY=${SKIP_CADDY:-0}
export PATH="$PATH:/usr/local/go/bin"
GO=${GO:-go}
OUT=${OUT:-.bench/scale-$(date +%Y%m%d-%H%M%S)}
mkdir -p .bench "$OUT"
printf '*\n' >.bench/.gitignore
OUT=$(cd "$OUT" && pwd)

die() { echo "bench-scale: $*" >&2; exit 1; }

if [ "$SKIP_GO" != 1 ]; then
	echo "==> Go scale tests (TPTOKEN_SCALE=1, no race detector; full output: $OUT/go-tests.txt)"
	TPTOKEN_SCALE=1 "$GO" test -count=1 -v -timeout 30m \
		-run 'TestColdAuthorizersAtOnce|TestBackgroundRenewalsFollow|TestStartupReadsNoRecord|TestMemoryPerCached' \
		./tokensource >"$OUT/go-tests.txt" 2>&1 || { tail -n 40 "$OUT/go-tests.txt" >&2; die "scale tests failed"; }
	"$GO" test -count=1 -v -run 'TestThousandConcurrentRequestsOnAColdAuthorizer' . >>"$OUT/go-tests.txt" 2>&1 ||
		{ tail -n 40 "$OUT/go-tests.txt" >&2; die "stampede test failed"; }
	grep -E 'SCALE|STAMPEDE|busiest' "$OUT/go-tests.txt" | sed 's/^ *[a-z_]*_test.go:[0-9]*: /    /'
fi
[ "$SKIP_CADDY" = 1 ] && exit 0

command -v curl >/dev/null || die "curl is needed"
echo
echo "==> building bin/caddy, bin/bench-upstream, bin/bench-genrecords"
"$GO" build -o bin/caddy ./cmd/caddy
"$GO" build -o bin/bench-upstream ./bench/upstream
"$GO" build -o bin/bench-genrecords ./bench/genrecords

export BENCH_ADMIN_PORT=$BASE_PORT
export BENCH_PORT=$((BASE_PORT + 1))
export BENCH_UPSTREAM_PORT=$((BASE_PORT + 2))
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $BENCH_ADMIN_PORT $BENCH_PORT $BENCH_UPSTREAM_PORT; do
	port_in_use "$p" && die "port $p on 127.0.0.1 is in use (set BASE_PORT)"
done

echo "==> storage folders: 1 record, and $RECORDS records"
rm -rf "$OUT/small" "$OUT/large"
bin/bench-genrecords -storage "$OUT/small" -n 1 >/dev/null
t0=$(date +%s)
bin/bench-genrecords -storage "$OUT/large" -n "$RECORDS"
echo "    (written in $(($(date +%s) - t0)) s; $(du -sh "$OUT/large" | cut -f1) on disk)"

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bin/bench-upstream -listen "127.0.0.1:$BENCH_UPSTREAM_PORT" >"$OUT/upstream.log" 2>&1 &
pids+=($!)

URL="http://127.0.0.1:$BENCH_PORT/openapi/v1/microapp/app/info"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# start_caddy STORAGE SWEEP LOG: launches Caddy; sets caddy_pid and ms (launch
# to first served request, polled every 5 ms).
start_caddy() {
	BENCH_STORAGE=$1 BENCH_SWEEP_INTERVAL=$2 bin/caddy run --adapter caddyfile --config scripts/bench-scale.Caddyfile >"$3" 2>&1 &
	caddy_pid=$!
	local t0 deadline out
	t0=$(now_ms)
	deadline=$((t0 + 60000))
	until out=$(curl -sS --max-time 2 -H 'X-Authorizer-Appid: tt0000000000000' -w ' %{http_code}' "$URL" 2>/dev/null) &&
		[[ $out == *'"errno":0'*' 200' ]]; do
		kill -0 "$caddy_pid" 2>/dev/null || { tail -n 20 "$3" >&2; die "Caddy exited"; }
		(($(now_ms) < deadline)) || { tail -n 20 "$3" >&2; die "no answer after 60 s: ${out:-none}"; }
		sleep 0.005
	done
	ms=$(($(now_ms) - t0))
}
stop_caddy() {
	kill "$caddy_pid" 2>/dev/null || true
	wait "$caddy_pid" 2>/dev/null || true
}

echo "==> $STARTS starts on each folder, alternating (launch to first request served with a stored token)"
printf 'run\tfolder\tstart_ms\trss_kib\n' >"$OUT/starts.tsv"
for r in $(seq 1 "$STARTS"); do
	for f in small large; do
		start_caddy "$OUT/$f" 24h "$OUT/caddy-$f-$r.log"
		rss=$(rss_kib "$caddy_pid")
		stop_caddy
		printf '%d\t%s\t%d\t%d\n' "$r" "$f" "$ms" "$rss" >>"$OUT/starts.tsv"
		printf '    run %d  %-5s  %5d ms   RSS %6d KiB\n' "$r" "$f" "$ms" "$rss"
	done
done
median() { sort -g | awk '{ v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%g (%g-%g)", m, v[1], v[NR] }'; }
for f in small large; do
	n=1
	[ "$f" = large ] && n=$RECORDS
	printf '    %-7s records: start to first request %s ms, RSS %s KiB (median, min-max)\n' "$n" \
		"$(awk -F'\t' -v f="$f" '$2 == f { print $3 }' "$OUT/starts.tsv" | median)" \
		"$(awk -F'\t' -v f="$f" '$2 == f { print $4 }' "$OUT/starts.tsv" | median)"
done

echo "==> the first sweep of $RECORDS records (sweep_interval 10s: it starts within 10 s)"
log=$OUT/caddy-sweep.log
start_caddy "$OUT/large" 10s "$log"
rss0=$(rss_kib "$caddy_pid")
deadline=$((SECONDS + 300))
until grep -q '"authorizer sweep done"' "$log"; do
	((SECONDS < deadline)) || die "no sweep within 300 s"
	sleep 0.2
done
rss1=$(rss_kib "$caddy_pid")
grep '"authorizer sweep done"' "$log" | head -n 1 |
	sed -E 's/.*"authorizers":([0-9]+).*"renewals_scheduled":([0-9]+).*"unreadable":([0-9]+).*"took":([0-9.]+).*/    sweep: \1 records read in \4 s, \2 renewals scheduled, \3 unreadable/'
echo "    RSS before the sweep $rss0 KiB, after it $rss1 KiB"
stop_caddy
echo
echo "results: $OUT"
