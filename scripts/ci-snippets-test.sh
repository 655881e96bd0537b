#!/usr/bin/env bash
# Runs the commands of the CI snippets in docs/ci.md (GitHub Actions,
# GitLab CI, Makefile) and of the README's "Pre-upload checks" in a
# throwaway git repository holding a golden model, as a CI checkout would:
# with the float32-storage model every gate must fail and every report must
# hold its 14 BNB001 findings; with the uint8 model every gate must pass and
# every report must be empty. The commands here are the ones the docs show
# (TestDocCommands checks that they stay copies). .ci/run runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
fail() { echo "ci-snippets-test: FAIL: $*" >&2; exit 1; }
if ! command -v python3 >/dev/null; then # to read the JSON reports
  [ "$(id -u)" = 0 ] || fail "python3 is needed to check the reports"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 >/dev/null || fail "apt-get install python3 failed"
fi

w=$(mktemp -d /tmp/qconv-ci-snippets.XXXXXX)
trap 'rm -rf "$w"' EXIT
mkdir "$w/bin"
go build -o "$w/bin/qconv" ./cmd/qconv
export PATH="$w/bin:$PATH"

# expect WANT CMD...: run CMD, fail unless it exits WANT.
expect() {
  local want=$1 rc=0
  shift
  "$@" >"$w/out" 2>"$w/err" || rc=$?
  [ "$rc" = "$want" ] || { cat "$w/out" "$w/err" >&2; fail "$model: '$*' exited $rc, want $want"; }
}
# report FILE KIND N: FILE is a SARIF or GitLab report with N findings, each BNB001 on model.safetensors.
report() {
  python3 - "$1" "$2" "$3" <<'PY' || fail "$model: $1 is not the report it should be"
import json, sys
path, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
doc = json.load(open(path))
if kind == "sarif":
    assert doc["version"] == "2.1.0", doc["version"]
    res = doc["runs"][0]["results"]
    assert len(res) == n, (len(res), n)
    for r in res:
        assert r["ruleId"] == "BNB001" and r["level"] == "error", r
        assert r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "model.safetensors", r
else:
    assert isinstance(doc, list) and len(doc) == n, (type(doc), len(doc), n)
    for i in doc:
        assert i["check_name"] == "BNB001" and i["severity"] == "critical", i
        assert i["location"]["path"] == "model.safetensors" and i["location"]["lines"]["begin"] == 1, i
        assert len(i["fingerprint"]) == 64 and i["description"], i
    assert len({i["fingerprint"] for i in doc}) == n
PY
}

for model in tiny-llama-bf16-nf4-dq-f32storage tiny-llama-bf16-nf4-dq-u8; do
  case $model in
    *f32storage) gate=1 n=14 ;;
    *) gate=0 n=0 ;;
  esac
  r=$w/$model
  mkdir "$r"
  cp "$root/testdata/golden/models/$model"/* "$r/"
  cd "$r"
  git init -q . && git add -A

  # GitHub Actions
  expect $gate qconv audit --format github .
  [ "$(grep -c '^::error file=model\.safetensors[,:].*BNB001' "$w/out" || true)" = $n ] ||
    { cat "$w/out"; fail "$model: want $n ::error annotations"; }
  expect 0 sh -c 'qconv audit --format sarif --fail-on never . > qconv.sarif'
  report qconv.sarif sarif $n

  # GitLab CI
  expect 0 sh -c 'qconv audit --format gitlab --fail-on never . > gl-code-quality-report.json'
  report gl-code-quality-report.json gitlab $n
  rm qconv.sarif
  expect 0 sh -c 'qconv audit --format sarif --fail-on never . > qconv.sarif'
  report qconv.sarif sarif $n
  expect $gate qconv audit .
  rm qconv.sarif gl-code-quality-report.json

  # Makefile
  cat >Makefile <<'MAKE'
audit:
	qconv audit --changed-files $$(git ls-files)
MAKE
  git add Makefile
  if [ $gate = 1 ]; then expect 2 make -s audit; else expect 0 make -s audit; fi # make exits 2 when a recipe fails

  # README, "Pre-upload checks"
  expect $gate sh -c 'qconv audit --changed-files $(git ls-files)'
  cd "$root"
done
echo "ci-snippets-test: OK (GitHub Actions, GitLab CI and Makefile commands on the float32-storage and uint8 models)"
