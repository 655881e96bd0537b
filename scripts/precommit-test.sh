#!/usr/bin/env bash
# Test of the pre-commit hook in .pre-commit-hooks.yaml with a real
# pre-commit (Debian's, installed if missing): a throwaway git repository
# gets the README's .pre-commit-config.yaml, pointed at a snapshot of this
# checkout, and a golden model. Committing the float32-storage model must
# fail with BNB001; committing the uint8 model must pass. .ci/run runs it.
#
# pre-commit builds qconv with the Go on PATH ("go install ./..." in its
# clone). GOMODCACHE is set to this machine's module cache so that the
# build finds the modules "go test" already downloaded; otherwise they come
# from GOPROXY, as for any Go build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
fail() { echo "precommit-test: FAIL: $*" >&2; exit 1; }

if ! command -v pre-commit >/dev/null; then
  echo "precommit-test: installing pre-commit from Debian"
  [ "$(id -u)" = 0 ] || fail "pre-commit is not installed and installing it needs root (apt-get install pre-commit)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q pre-commit >/dev/null ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pre-commit >/dev/null; } ||
    fail "apt-get install pre-commit failed"
fi
echo "precommit-test: $(pre-commit --version), $(go version | cut -d' ' -f3)"

w=$(mktemp -d /tmp/qconv-precommit.XXXXXX)
trap 'if [ -n "${KEEP_WORKDIR:-}" ]; then echo "precommit-test: kept $w"; else rm -rf "$w"; fi' EXIT
# Hermetic git and pre-commit: no global hooks path or templates, a cache
# that goes away with $w.
export GIT_CONFIG_GLOBAL=$w/gitconfig GIT_CONFIG_NOSYSTEM=1 PRE_COMMIT_HOME=$w/cache
export GOMODCACHE="${GOMODCACHE:-$(go env GOMODCACHE)}"
git config --global user.name "qconv test"
git config --global user.email "test@qconv.invalid"
git config --global init.defaultBranch main
git config --global advice.detachedHead false

# The hook repository: this checkout as it is on disk (uncommitted and new
# files included, ignored ones not) as one commit, like pre-commit try-repo.
src=$w/qconv
git init -q "$src"
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - -cf - | tar -xf - -C "$src"
git -C "$src" add -A
git -C "$src" commit -q -m "snapshot of the qconv checkout under test"
rev=$(git -C "$src" rev-parse HEAD)

# The README's .pre-commit-config.yaml: the yaml block after the marker
# naming this script, with repo: and rev: pointed at the snapshot.
config=$(awk '
  /^<!-- test: scripts\/precommit-test.sh -->$/ { marked = 1; next }
  marked && /^```yaml$/ { inblock = 1; next }
  inblock && /^```$/ { exit }
  inblock { print }
  marked && !inblock && NF { marked = 0 }
' README.md)
[ -n "$config" ] || fail "no yaml block marked <!-- test: scripts/precommit-test.sh --> in README.md"
grep -q 'id: qconv-audit' <<<"$config" || fail "README's .pre-commit-config.yaml has no qconv-audit hook"

repo=$w/models
git init -q "$repo"
cd "$repo"
sed -e "s|repo: .*|repo: $src|" -e "s|rev: .*|rev: $rev|" <<<"$config" >.pre-commit-config.yaml
printf '# models\n' >README.md
git add .pre-commit-config.yaml README.md
git commit -q -m "pre-commit config" # before "pre-commit install": no hook yet
pre-commit install
pre-commit install-hooks >"$w/install.log" 2>&1 || { cat "$w/install.log"; fail "pre-commit could not build the hook (go install in its clone of $src)"; }

golden=$root/testdata/golden/models
echo "precommit-test: commit a model with 4-bit weights in float32 storage: must fail"
cp -r "$golden/tiny-llama-bf16-nf4-dq-f32storage" tiny-llama
git add tiny-llama
if git commit -q -m "add tiny-llama (float32 storage)" >"$w/f32.log" 2>&1; then
  cat "$w/f32.log"; fail "the hook let a float32-storage model be committed"
fi
grep -q 'qconv audit\.*Failed' "$w/f32.log" || { cat "$w/f32.log"; fail "the commit failed, but not in the qconv-audit hook"; }
n=$(grep -c 'BNB001' "$w/f32.log" || true)
[ "$n" = 14 ] || { cat "$w/f32.log"; fail "want 14 BNB001 findings (one per packed weight, the directory audited once), got $n"; }
echo "precommit-test:   failed as it should, $n BNB001 findings"

echo "precommit-test: commit the uint8 model instead: must pass"
rm -rf tiny-llama
cp -r "$golden/tiny-llama-bf16-nf4-dq-u8" tiny-llama
git add -A tiny-llama
git commit -q -m "add tiny-llama (uint8 storage)" >"$w/u8.log" 2>&1 || { cat "$w/u8.log"; fail "the hook refused the uint8 model"; }
grep -q 'qconv audit\.*Passed' "$w/u8.log" || { cat "$w/u8.log"; fail "the commit passed without running qconv-audit"; }

echo "precommit-test: README's pre-commit commands"
pre-commit run qconv-audit --all-files >"$w/all.log" 2>&1 || { cat "$w/all.log"; fail "pre-commit run qconv-audit --all-files failed on a clean repository"; }
cp "$golden/tiny-llama-bf16-nf4-dq-f32storage/model.safetensors" tiny-llama/model.safetensors
if pre-commit run qconv-audit --all-files >"$w/all.log" 2>&1; then
  cat "$w/all.log"; fail "pre-commit run qconv-audit --all-files passed a float32-storage model"
fi
echo "precommit-test: OK"
