#!/usr/bin/env bash
# bench-load.sh: the cost of tptoken under load, measured side by side with
# plain reverse_proxy in ONE Caddy process (what `make bench-load` runs).
#
# One Caddy (bin/caddy-sandbox, scripts/bench-load.Caddyfile) serves three sites in
# front of the same fast upstream (bench/upstream, small JSON answers):
#
#	A  plain reverse_proxy
#	B  tptoken + reverse_proxy { transport tptoken }, max_replay_body off (no response inspection)
#	C  tptoken + reverse_proxy { transport tptoken }, default replay (answers inspected)
#
# tptoken has a real authorizer: the platform emulator (tptoken_emulator, same
# process) pushes a ticket and an AUTHORIZED event to tptoken_events.
#
# wrk loads the sites in alternating rounds (A B C A B C ...), so the machine's
# drift hits every site alike. Each round records requests/s, p50 and p99
# latency, and the Caddy process's CPU time (utime+stime from /proc/<pid>/stat)
# divided by the requests served: CPU per request. The summary gives medians
# with their spread (min-max), and the per-round ratios B/A and C/A.
#
# Settings (environment):
#	ROUNDS=5         rounds (each loads every site once)
#	DURATION=10      seconds per site and round
#	WARMUP=3         seconds of load per site before the first round
#	THREADS=2 CONNS=64   wrk -t / -c
#	SITES="A B C"    which sites, in round order
#	ORDER=fixed      rotate: each round starts one site later (A B C, B C A, C A B, ...),
#	                 so no site always follows the same one
#	BASE_PORT=18480  ports BASE_PORT..BASE_PORT+6 on 127.0.0.1 (admin, A, B, C, events, emulator, upstream)
#	OUT=.bench/load-<time>  where results go (results.tsv, wrk outputs, caddy.log)
#	IDLE_CONNS=128   upstream keep-alive connections kept idle per site (Caddy's
#	                 default, 32, makes ~15% of requests open a new connection at
#	                 -c64, alike in every site but with a large random spread)
#	PIN=0            1: Caddy on CPU 0, wrk and the upstream on CPU 1 (taskset):
#	                 Caddy then has a core to itself (GOMAXPROCS 1) and is the
#	                 bottleneck, so its cost per request shows 1:1 in throughput
#	PROFILE=0        1: afterwards, one more load per site while Caddy's admin
#	                 /debug/pprof/profile records a CPU profile (OUT/cpu-<site>.pprof)
#	GO=go
#
# Loopback only. wrk is installed with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
SITES=${SITES:-"A B C"}
BASE_PORT=${BASE_PORT:-18480}
PROFILE=${PROFILE:-0}
PIN=${PIN:-0}
IDLE_CONNS=${IDLE_CONNS:-128}
ORDER=${ORDER:-fixed}
export PATH="$PATH:/usr/local/go/bin"
GO=${GO:-go}
OUT=${OUT:-.bench/load-$(date +%Y%m%d-%H%M%S)}

APPID=tt0000bench01
REQ_PATH="/openapi/v1/microapp/app/info?page=1&page_size=20"

die() { echo "bench-load: $*" >&2; exit 1; }

if ! command -v wrk >/dev/null; then
	echo "==> installing wrk (apt-get)"
	apt-get update -qq && apt-get install -y -qq wrk >/dev/null || die "could not install wrk"
fi
command -v curl >/dev/null || die "curl is needed"
command -v "$GO" >/dev/null || die "Go is missing"

echo "==> building bin/caddy-sandbox and bin/bench-upstream"
"$GO" build -o bin/caddy-sandbox ./cmd/caddy-sandbox
"$GO" build -o bin/bench-upstream ./bench/upstream

mkdir -p .bench "$OUT"
printf '*\n' >.bench/.gitignore
OUT=$(cd "$OUT" && pwd)

export BENCH_ADMIN_PORT=$BASE_PORT
export BENCH_PORT_A=$((BASE_PORT + 1))
export BENCH_PORT_B=$((BASE_PORT + 2))
export BENCH_PORT_C=$((BASE_PORT + 3))
export BENCH_EVENTS_PORT=$((BASE_PORT + 4))
export BENCH_EMU_PORT=$((BASE_PORT + 5))
export BENCH_UPSTREAM_PORT=$((BASE_PORT + 6))
export BENCH_DIR=$OUT
export BENCH_IDLE_CONNS=$IDLE_CONNS
# Made-up secrets shared by the emulator and tptoken.
export BENCH_TP_APPSECRET=bench-tp-appsecret
export BENCH_TP_MESSAGE_TOKEN=bench-tp-message-token
export BENCH_TP_ENCODING_AES_KEY=F5qdpIUZpxkEsbzEMM4jhomFInN2FTaOOK7SAl6sEuU

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $(seq "$BASE_PORT" $((BASE_PORT + 6))); do
	port_in_use "$p" && die "port $p on 127.0.0.1 is in use (set BASE_PORT)"
done

site_port() {
	case $1 in
	A) echo "$BENCH_PORT_A" ;;
	B) echo "$BENCH_PORT_B" ;;
	C) echo "$BENCH_PORT_C" ;;
	*) die "unknown site $1" ;;
	esac
}

pids=()
cleanup() {
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do
		wait "$p" 2>/dev/null || true
	done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pin_caddy=()
pin_load=()
if [ "$PIN" = 1 ]; then
	command -v taskset >/dev/null || die "PIN=1 needs taskset (util-linux)"
	(($(nproc) >= 2)) || die "PIN=1 needs 2 CPUs"
	pin_caddy=(taskset -c 0)
	pin_load=(taskset -c 1)
fi

"${pin_load[@]}" bin/bench-upstream -listen "127.0.0.1:$BENCH_UPSTREAM_PORT" >"$OUT/upstream.log" 2>&1 &
pids+=($!)
"${pin_caddy[@]}" bin/caddy-sandbox run --adapter caddyfile --config scripts/bench-load.Caddyfile >"$OUT/caddy.log" 2>&1 &
caddy_pid=$!
pids+=("$caddy_pid")

# Ready when every site answers 200 with the upstream's body (for B and C: the
# emulator pushed the ticket and the authorization, and tptoken exchanged the code).
deadline=$((SECONDS + 60))
for s in $SITES; do
	url="http://127.0.0.1:$(site_port "$s")$REQ_PATH"
	until out=$(curl -sS --max-time 5 -H "X-Authorizer-Appid: $APPID" -w ' %{http_code}' "$url" 2>/dev/null) &&
		[[ $out == *'"errno":0'*' 200' ]]; do
		kill -0 "$caddy_pid" 2>/dev/null || { tail -n 30 "$OUT/caddy.log" >&2; die "Caddy exited"; }
		((SECONDS < deadline)) || { tail -n 30 "$OUT/caddy.log" >&2; die "site $s not ready after 60 s: ${out:-no answer}"; }
		sleep 0.3
	done
done

clk_tck=$(getconf CLK_TCK)
# cpu_ticks PID: utime+stime of a process, in clock ticks.
cpu_ticks() {
	local stat
	stat=$(<"/proc/$1/stat")
	stat=${stat##*) } # the command name may hold spaces: fields start after ") "
	# shellcheck disable=SC2086
	set -- $stat
	# after the name: $1 is field 3 (state), so utime (14) is $12 and stime (15) is $13
	echo $((${12} + ${13}))
}

# wrk_run SITE SECONDS OUTFILE
wrk_run() {
	"${pin_load[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$2"s --latency -H "X-Authorizer-Appid: $APPID" \
		"http://127.0.0.1:$(site_port "$1")$REQ_PATH" >"$3"
}

# parse_wrk FILE: "rps p50_ms p99_ms requests non2xx socket_errors"
parse_wrk() {
	awk '
	function ms(v) {
		if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
		if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
		if (v ~ /m$/) { sub(/m$/, "", v); return v * 60000 }
		if (v ~ /s$/) { sub(/s$/, "", v); return v * 1000 }
		return v + 0
	}
	/^ +50%/ { p50 = ms($2) }
	/^ +99%/ { p99 = ms($2) }
	/requests in/ { n = $1 }
	/^Requests\/sec:/ { rps = $2 }
	/Non-2xx or 3xx responses:/ { bad = $5 }
	/Socket errors:/ { gsub(/,/, ""); errs = $4 + $6 + $8 + $10 }
	END { printf "%s %.3f %.3f %s %d %d\n", rps, p50, p99, n, bad, errs }' "$1"
}

echo "==> warm-up: ${WARMUP}s per site"
for s in $SITES; do
	wrk_run "$s" "$WARMUP" "$OUT/warmup-$s.txt"
done

results=$OUT/results.tsv
printf 'round\tsite\trps\tp50_ms\tp99_ms\trequests\tcpu_us_per_req\tnon2xx\tsocket_errors\tupstream_conns\n' >"$results"
# upstream_conns: connections the upstream accepted (all sites), from its stats.
upstream_conns() { curl -sS "http://127.0.0.1:$BENCH_UPSTREAM_PORT/_bench/stats" | awk '$1 == "connections" { print $2 }'; }
echo "==> $ROUNDS rounds x ${DURATION}s per site (wrk -t$THREADS -c$CONNS --latency), order: $SITES ($ORDER)$([ "$PIN" = 1 ] && echo ", Caddy pinned to CPU 0, wrk and upstream to CPU 1")"
printf '%-5s %-4s %10s %9s %9s %10s %12s %9s\n' round site 'req/s' 'p50 ms' 'p99 ms' requests 'CPU us/req' 'up conns'
read -r -a site_list <<<"$SITES"
for r in $(seq 1 "$ROUNDS"); do
	order=("${site_list[@]}")
	if [ "$ORDER" = rotate ]; then
		k=$(((r - 1) % ${#site_list[@]}))
		order=("${site_list[@]:k}" "${site_list[@]:0:k}")
	fi
	for s in "${order[@]}"; do
		f="$OUT/round-$r-$s.txt"
		c0=$(upstream_conns)
		t0=$(cpu_ticks "$caddy_pid")
		wrk_run "$s" "$DURATION" "$f"
		t1=$(cpu_ticks "$caddy_pid")
		c1=$(upstream_conns)
		read -r rps p50 p99 n bad errs < <(parse_wrk "$f")
		cpu=$(awk -v d=$((t1 - t0)) -v hz="$clk_tck" -v n="$n" 'BEGIN { printf "%.2f", d * 1e6 / hz / n }')
		printf '%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$s" "$rps" "$p50" "$p99" "$n" "$cpu" "$bad" "$errs" $((c1 - c0)) >>"$results"
		printf '%-5s %-4s %10s %9s %9s %10s %12s %9s' "$r" "$s" "$rps" "$p50" "$p99" "$n" "$cpu" $((c1 - c0))
		((bad > 0 || errs > 0)) && printf '   (non-2xx: %s, socket errors: %s)' "$bad" "$errs"
		printf '\n'
	done
done

# The upstream counts requests with and without an injected token: B and C must
# have injected one into every request, A into none.
echo
echo "==> upstream saw: $(curl -sS "http://127.0.0.1:$BENCH_UPSTREAM_PORT/_bench/stats" | tr '\n' ' ')"

# stats COLUMN SITE: "median min max" of a column over the rounds.
stats() {
	awk -F'\t' -v c="$1" -v s="$2" 'NR > 1 && $2 == s { print $c }' "$results" | sort -g |
		awk '{ v[NR] = $1 } END { if (NR == 0) exit; m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%g %g %g\n", m, v[1], v[NR] }'
}
# ratios COLUMN SITE: "median min max" of SITE/A per round.
ratios() {
	awk -F'\t' -v c="$1" -v s="$2" 'NR > 1 { v[$1, $2] = $c; if ($1 > n) n = $1 }
		END { for (r = 1; r <= n; r++) if (((r, "A") in v) && ((r, s) in v) && v[r, "A"] > 0) print v[r, s] / v[r, "A"] }' "$results" | sort -g |
		awk '{ v[NR] = $1 } END { if (NR == 0) exit; m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f %.3f %.3f\n", m, v[1], v[NR] }'
}

echo
echo "==> summary over $ROUNDS rounds: median (min-max)"
printf '%-4s %-26s %-24s %-24s %-22s\n' site 'req/s' 'p50 ms' 'p99 ms' 'CPU us/req'
for s in $SITES; do
	read -r rm rl rh < <(stats 3 "$s")
	read -r pm pl ph < <(stats 4 "$s")
	read -r qm ql qh < <(stats 5 "$s")
	read -r cm cl ch < <(stats 7 "$s")
	printf '%-4s %-26s %-24s %-24s %-22s\n' "$s" "$rm ($rl-$rh)" "$pm ($pl-$ph)" "$qm ($ql-$qh)" "$cm ($cl-$ch)"
done
verdicts=()
case " $SITES " in *" A "*)
	echo
	echo "per-round ratios to A (same round): median (min-max)"
	printf '%-6s %-24s %-24s %-24s\n' '' 'throughput' 'p99 latency' 'CPU per request'
	for s in $SITES; do
		[ "$s" = A ] && continue
		read -r tm tl th < <(ratios 3 "$s")
		read -r qm ql qh < <(ratios 5 "$s")
		read -r cm cl ch < <(ratios 7 "$s")
		printf '%-6s %-24s %-24s %-24s\n' "$s/A" "$tm ($tl-$th)" "$qm ($ql-$qh)" "$cm ($cl-$ch)"
		verdicts+=("$(awk -v s="$s" -v t="$tm" -v q="$qm" 'BEGIN {
			printf "%s: throughput %.3f of plain (target >= 0.97: %s), p99 %.3f of plain (target <= 1.10: %s)",
				s, t, (t >= 0.97 ? "met" : "NOT met"), q, (q <= 1.10 ? "met" : "NOT met") }')")
	done
	echo
	echo "targets (medians of the per-round ratios):"
	printf '    %s\n' "${verdicts[@]}"
	;;
esac

if [ "$PROFILE" = 1 ]; then
	echo
	echo "==> CPU profiles (${DURATION}s of load per site, Caddy's /debug/pprof/profile)"
	for s in $SITES; do
		curl -sS --max-time $((DURATION + 30)) -o "$OUT/cpu-$s.pprof" \
			"http://127.0.0.1:$BENCH_ADMIN_PORT/debug/pprof/profile?seconds=$DURATION" &
		prof=$!
		sleep 0.2
		wrk_run "$s" $((DURATION + 1)) "$OUT/profile-$s.txt"
		wait "$prof"
		echo "    $OUT/cpu-$s.pprof   (go tool pprof -top bin/caddy-sandbox $OUT/cpu-$s.pprof)"
	done
fi
echo
echo "results: $results"
