#!/usr/bin/env bash
# Issue 15's comparison on any Linux host: qconv convert at several -j
# against cp -r, cp -r + sync and the host's own read and write yardsticks,
# with CPU, blocking and mutex profiles of a convert at one worker per CPU.
# See docs/benchmark.md.
#
#   scripts/bench-scale.sh                      # 13.5 GB (Llama-7B, 32 layers) bf16
#   SIZE=2GB RUNS=5 scripts/bench-scale.sh
#
# Environment: BIN (prebuilt qconv-bench and qconv, static; built with
# CGO_ENABLED=0 go build if absent), SIZE, RUNS, JOBS (the -j list), DIR
# (working directory; "auto" puts it on the disk unless the disk writes
# below 1 GB/s, then on /dev/shm), OUT (where the results go), BASE (an
# older qconv binary, timed at one worker per CPU for a before/after),
# EXTRA (more qconv-bench flags, e.g. -warmup=false).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/bench}
SIZE=${SIZE:-13.5GB}
RUNS=${RUNS:-3}
CPUS=$(nproc)
JOBS=${JOBS:-$(for j in 1 2 4 8 16 32 64; do if [ "$j" -le "$CPUS" ]; then printf '%s,' "$j"; fi; done | sed 's/,$//')}
OUT=${OUT:-.}
DIR=${DIR:-auto}
mkdir -p "$OUT"
if [ ! -x "$BIN/qconv-bench" ] || [ ! -x "$BIN/qconv" ]; then
  CGO_ENABLED=0 go build -o "$BIN/" ./cmd/qconv-bench ./cmd/qconv
fi
{
  echo "== host"; uname -a; nproc; free -g; df -hT /tmp /dev/shm . 2>/dev/null || true
  grep -m1 'model name' /proc/cpuinfo || true
} 2>&1 | tee "$OUT/host.txt"
if [ "$DIR" = auto ]; then
  DIR=/tmp/qconv-bench
  mkdir -p "$DIR"
  # 2 GB written and fdatasync'ed: the disk's own write rate.
  rate=$(dd if=/dev/zero of="$DIR/dd.tmp" bs=1M count=2000 conv=fdatasync 2>&1 | tail -1)
  rm -f "$DIR/dd.tmp"
  echo "disk: $rate" | tee -a "$OUT/host.txt"
  case "$rate" in
    *" GB/s"*) ;;
    *) DIR=/dev/shm/qconv-bench; echo "disk below 1 GB/s: working in $DIR (fsync is free there)" | tee -a "$OUT/host.txt" ;;
  esac
fi
# The older binary first (it also generates the input).
if [ -n "${BASE:-}" ]; then
  "$BIN/qconv-bench" -qconv "$BASE" -size "$SIZE" -dir "$DIR" -runs "$RUNS" -jobs "$CPUS" \
    -cp=false -yardstick=false -audit=false -warmup=false 2>&1 | tee "$OUT/base.txt"
fi
# shellcheck disable=SC2086 # EXTRA is a list of flags
"$BIN/qconv-bench" -qconv "$BIN/qconv" -size "$SIZE" -dir "$DIR" -runs "$RUNS" -jobs "$JOBS" ${EXTRA:-} \
  -cpuprofile "$OUT/cpu.pprof" -blockprofile "$OUT/block.pprof" -mutexprofile "$OUT/mutex.pprof" \
  -profile-workers "$CPUS" 2> >(tee "$OUT/bench.log" >&2) | tee "$OUT/bench.txt"
# Where the time of one convert at one worker per CPU goes in the kernel,
# where the tools are installed (appended to host.txt).
src=$(ls -d "$DIR"/in-*L | head -1)
for tool in strace perf; do
  command -v "$tool" >/dev/null || { echo "($tool not installed)" >>"$OUT/host.txt"; continue; }
  rm -rf "$DIR/out-$tool"
  case $tool in
    strace) strace -f -c -o "$DIR/strace.txt" "$BIN/qconv" convert "$src" "$DIR/out-$tool" -j "$CPUS" >/dev/null
            { echo "== strace -f -c qconv convert -j $CPUS"; cat "$DIR/strace.txt"; } >>"$OUT/host.txt" ;;
    perf)   perf record -q -g -o "$DIR/perf.data" "$BIN/qconv" convert "$src" "$DIR/out-$tool" -j "$CPUS" >/dev/null 2>&1 &&
            { echo "== perf report qconv convert -j $CPUS"; perf report -i "$DIR/perf.data" --no-children --sort sym -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -150; } >>"$OUT/host.txt" ;;
  esac
  rm -rf "$DIR/out-$tool"
done
