#!/usr/bin/env bash
# Times qconv builds against each other on one input, alternately, so that
# a VM's changing speed hits every build alike (docs/benchmark.md).
#
#   scripts/alternate.sh ROUNDS SRC BIN [BIN ...]
#   scripts/alternate.sh 8 /tmp/qb/in-bf16-4L .dev/old/qconv .dev/new/qconv
#
# Each round runs `BIN convert SRC DIR` once per build, in the order
# given, into a fresh DIR (beside SRC, removed and synced before each
# run; the output is fsynced by convert itself). It prints each run, then
# per build the median wall time and the mean user and system CPU.
# Environment: QCONV_ARGS (more convert flags, e.g. "-j 4").
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
rounds=$1 src=$2
shift 2
out="$src.alternate-out"
TIMEFORMAT='%R %U %S'
results=$(
  for _ in $(seq "$rounds"); do
    for bin in "$@"; do
      rm -rf "$out"
      sync
      # shellcheck disable=SC2086 # QCONV_ARGS is a list of flags
      if ! t=$( { time "$bin" convert ${QCONV_ARGS:-} "$src" "$out" >/dev/null 2>&1; } 2>&1); then
        echo "alternate.sh: $bin convert $src failed" >&2
        exit 1
      fi
      echo "$bin $t"
    done
  done
)
rm -rf "$out"
echo "$results"
echo "$results" | awk '
  { w[$1] = w[$1] " " $2; u[$1] += $3; s[$1] += $4; n[$1]++; if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 } }
  END {
    for (i = 1; i <= k; i++) {
      b = order[i]
      m = split(substr(w[b], 2), a, " ")
      for (x = 1; x <= m; x++) for (y = x + 1; y <= m; y++) if (a[y] < a[x]) { t = a[x]; a[x] = a[y]; a[y] = t }
      med = (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
      printf "%s: median %.3f s (min %.2f, max %.2f) over %d runs; user %.3f s, system %.3f s (means)\n", b, med, a[1], a[m], m, u[b] / n[b], s[b] / n[b]
    }
  }'
