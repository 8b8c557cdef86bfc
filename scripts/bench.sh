#!/usr/bin/env bash
# bench.sh: the Go benchmarks (what `make bench` runs), each run COUNT times,
# reported as medians with their spread: this shared 2-core machine swings
# 10-30% from run to run, so one run says little.
#
#	COUNT=10       runs of each benchmark (go test -count)
#	BENCH=.        benchmark name pattern (go test -bench)
#	BENCHTIME=     go test -benchtime (default: Go's 1s)
#	PKGS=./...     packages
#	OUT=.bench/bench-<time>.txt   raw `go test` output (benchstat reads it too)
#	GO=go
#
# It ends with the quality bar of the handler's cached-token path
# (BenchmarkHandlerCachedToken: <= 1 us and <= 8 allocations per request).
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-10}
BENCH=${BENCH:-.}
BENCHTIME=${BENCHTIME:-}
PKGS=${PKGS:-./...}
export PATH="$PATH:/usr/local/go/bin"
GO=${GO:-go}
mkdir -p .bench
printf '*\n' >.bench/.gitignore
OUT=${OUT:-.bench/bench-$(date +%Y%m%d-%H%M%S).txt}

# The fault tests' TestMain builds Caddy even when no test runs: skip it here.
export TPTOKEN_SKIP_FAULT_TESTS=1
echo "==> go test -run '^\$' -bench '$BENCH' -benchmem -count $COUNT ${BENCHTIME:+-benchtime $BENCHTIME }$PKGS  (raw output: $OUT)"
# shellcheck disable=SC2086
"$GO" test -run '^$' -bench "$BENCH" -benchmem -count "$COUNT" ${BENCHTIME:+-benchtime "$BENCHTIME"} $PKGS | tee "$OUT" |
	grep -E '^(Benchmark|ok|FAIL|---)' >&2 || true
grep -q '^FAIL' "$OUT" && { echo "bench: a benchmark failed (see $OUT)" >&2; exit 1; }

echo
echo "==> medians of $COUNT runs (min-max)"
# One line per benchmark: name, then "ns/op", "B/op", "allocs/op" samples.
awk '
	/^pkg: / { pkg = $2; sub(/.*caddy-tptoken/, "", pkg); pkg = pkg == "" ? "." : substr(pkg, 2) }
	/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name)
		key = pkg " " name
		if (!(key in seen)) { seen[key] = 1; order[++n] = key }
		for (i = 3; i < NF; i += 2) {
			if ($(i + 1) == "ns/op") ns[key] = ns[key] " " $i
			if ($(i + 1) == "B/op") by[key] = $i
			if ($(i + 1) == "allocs/op") al[key] = $i
		}
	}
	END { for (i = 1; i <= n; i++) { k = order[i]; print k "\t" ns[k] "\t" by[k] "\t" al[k] } }
' "$OUT" | while IFS=$'\t' read -r key samples bytes allocs; do
	read -r m lo hi < <(tr ' ' '\n' <<<"$samples" | grep . | sort -g |
		awk '{ v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m, v[1], v[NR] }')
	printf '%-12s %-58s %10s ns/op  (%s-%s)  %6s B/op  %3s allocs/op\n' ${key% *} "${key#* }" "$m" "$lo" "$hi" "${bytes:--}" "${allocs:--}"
done | tee "$OUT.summary"

# The quality bar of the cached-token path.
if grep -q 'BenchmarkHandlerCachedToken/' "$OUT.summary"; then
	echo
	echo "==> handler cached-token path: target <= 1000 ns/op and <= 8 allocs/op (median)"
	awk '$2 ~ /^BenchmarkHandlerCachedToken\// {
		ok = ($3 <= 1000 && $8 <= 8) ? "met" : "NOT met"
		printf "    %-40s %s ns/op, %s allocs/op: %s\n", $2, $3, $8, ok
	}' "$OUT.summary"
fi
command -v benchstat >/dev/null && echo && echo "(benchstat $OUT gives the same medians with confidence intervals)"
exit 0
