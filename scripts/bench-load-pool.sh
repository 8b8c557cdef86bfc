#!/usr/bin/env bash
# bench-load-pool.sh: pools the rounds of several scripts/bench-load.sh runs
# (their results.tsv files) and prints the medians, with min-max, of the
# per-round ratios to site A: throughput, p99 latency, CPU per request.
#
#	scripts/bench-load-pool.sh .bench/load-*/results.tsv
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 results.tsv..." >&2; exit 2; }

# ratios COLUMN SITE FILES...: one SITE/A ratio per round of each file.
ratios() {
	local col=$1 site=$2
	shift 2
	for f in "$@"; do
		awk -F'\t' -v c="$col" -v s="$site" 'NR > 1 { v[$1, $2] = $c; if ($1 > n) n = $1 }
			END { for (r = 1; r <= n; r++) if (((r, "A") in v) && ((r, s) in v) && v[r, "A"] > 0) print v[r, s] / v[r, "A"] }' "$f"
	done | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit; m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f (%.3f-%.3f, %d rounds)\n", m, v[1], v[NR], NR }'
}

echo "pooled over $# runs: median of the per-round ratios to A (min-max)"
printf '%-6s %-32s %-32s %-32s\n' '' 'throughput' 'p99 latency' 'CPU per request'
for s in B C; do
	printf '%-6s %-32s %-32s %-32s\n' "$s/A" "$(ratios 3 "$s" "$@")" "$(ratios 5 "$s" "$@")" "$(ratios 7 "$s" "$@")"
done
