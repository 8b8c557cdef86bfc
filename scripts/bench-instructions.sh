#!/usr/bin/env bash
# bench-instructions.sh: instructions per request through a real Caddy (the
# Go benchmark BenchmarkCaddyRequest, run under valgrind's callgrind), for
# plain reverse_proxy and for tptoken with and without replay inspection.
#
# Time on this shared 2-core machine swings 10-30% from one second to the
# next; instruction counts do not. Each case runs twice, with N1 and N2
# requests, in a new process: (instructions(N2) - instructions(N1)) / (N2 - N1)
# is the cost of one request, start-up cancelled out. The figure covers
# Caddy's request path and the in-process loopback upstream; the differences
# between the cases are the plugin's cost.
#
# The garbage collector is off by default (GOGC=off; about 25 KB per request
# stay on the heap, 200 MB for 8,500 requests): its cycles fall at different
# requests from run to run and would add +-3,000 instructions of noise. Its
# share of the cost follows the bytes allocated per request, which the Go
# benchmarks report (B/op). GOGC=100 measures with it.
#
#	N1=500 N2=4500 REPS=2 CASES="plain_reverse_proxy tptoken_replay_off tptoken_replay_on" GO=go
#	BIN=<test binary>   measure a binary built before (go test -c), e.g. of an
#	                    older commit, instead of building this checkout's
set -euo pipefail
cd "$(dirname "$0")/.."

GOGC=${GOGC:-off}
N1=${N1:-500}
N2=${N2:-4500}
REPS=${REPS:-2}
CASES=${CASES:-"plain_reverse_proxy tptoken_replay_off tptoken_replay_on"}
export PATH="$PATH:/usr/local/go/bin"
GO=${GO:-go}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install -y valgrind)" >&2; exit 1; }
mkdir -p .bench
printf '*\n' >.bench/.gitignore
bin=${BIN:-}
if [ -z "$bin" ]; then
	bin=.bench/tptoken.test
	"$GO" test -c -o "$bin" .
fi

# Go's asynchronous preemption signals upset callgrind; one P keeps the
# schedule (and so the count) steady.
count() { # CASE N
	TPTOKEN_SKIP_FAULT_TESTS=1 GODEBUG=asyncpreemptoff=1 GOMAXPROCS=1 GOGC=$GOGC \
		valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" \
		-test.run '^$' -test.bench "BenchmarkCaddyRequest/$1\$" -test.benchtime "${2}x" 2>&1 |
		awk '/Collected :/ { print $4 }'
}

echo "==> instructions per request (callgrind, GOGC=$GOGC; ($N2 - $N1 requests) per measurement, $REPS measurements per case)"
declare -A per
for c in $CASES; do
	vals=()
	for _ in $(seq 1 "$REPS"); do
		a=$(count "$c" "$N1")
		b=$(count "$c" "$N2")
		[ -n "$a" ] && [ -n "$b" ] || { echo "callgrind gave no count for $c" >&2; exit 1; }
		vals+=($(((b - a) / (N2 - N1))))
	done
	per[$c]=$(printf '%s\n' "${vals[@]}" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2)) }')
	printf '    %-22s %8d   (measurements: %s)\n' "$c" "${per[$c]}" "${vals[*]}"
done
base=${per[plain_reverse_proxy]:-}
if [ -n "$base" ]; then
	for c in $CASES; do
		[ "$c" = plain_reverse_proxy ] && continue
		awk -v c="$c" -v x="${per[$c]}" -v b="$base" 'BEGIN { printf "    %-22s %+8d instructions per request (%+.1f%%) against plain reverse_proxy\n", c, x - b, (x - b) * 100 / b }'
	done
fi
