#!/usr/bin/env bash
# Issue 6's benchmark: qconv convert and audit against cp -r on a synthetic
# Llama-7B-like checkpoint. See docs/benchmark.md.
#
#   scripts/bench.sh            # 2 GB bf16, 3 runs of each (flags go to qconv-bench)
#   scripts/bench.sh -size 8GB  # peak RSS must not grow with the model
#   scripts/bench.sh all        # both, then the input files are removed
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = all ]; then
  shift
  go run ./cmd/qconv-bench -size 2GB -clean "$@"
  go run ./cmd/qconv-bench -size 8GB -clean "$@"
else
  go run ./cmd/qconv-bench "$@"
fi
