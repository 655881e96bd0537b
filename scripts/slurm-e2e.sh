#!/usr/bin/env bash
# End-to-end test of examples/slurm-array.sh on a real Slurm: a throwaway
# one-node cluster on this host (munged, slurmctld and slurmd started here
# with their own key, socket, ports, state and logs under one temporary
# directory, and all stopped at the end), the example submitted unchanged as
# a 3-task job array over a tiny golden model, --finalize as an afterok
# dependent job, and the result compared byte for byte with a one-process
# conversion. Installs Debian's slurm-wlm and munge if they are missing.
# Needs root (SlurmUser=root). .ci/run runs it; about 15 s on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "slurm-e2e: $*"; }
fail() { echo "slurm-e2e: FAIL: $*" >&2; exit 1; }
t0=$SECONDS

[ "$(id -u)" = 0 ] || fail "must run as root (slurmd starts jobs as root; SlurmUser=root)"
missing=()
for c in munged munge unmunge slurmctld slurmd sbatch scontrol sinfo squeue scancel; do
  command -v "$c" >/dev/null || missing+=("$c")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing slurm-wlm and munge from Debian (missing: ${missing[*]})"
  apt() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null; }
  apt || { apt-get update -q >/dev/null && apt; } || fail "apt-get install slurm-wlm munge failed"
fi
say "$(slurmctld -V), $(munged -V 2>&1 | awk '{print $1}')"

w=$(mktemp -d /tmp/qconv-slurm.XXXXXX)
chmod 755 "$w"
names=() pids=()
export SLURM_CONF=$w/slurm.conf
stop_all() {
  local rc=$? i p
  trap - EXIT INT TERM
  if [ ${#pids[@]} -ge 2 ]; then # slurmctld is up: cancel what is left of our jobs
    scancel --quiet ${jobs:-} 2>/dev/null || true
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do # slurmd, slurmctld, munged
    p=${pids[i]}
    kill "$p" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then
      echo "slurm-e2e: ${names[i]} (pid $p) ignored SIGTERM; killing it" >&2
      kill -KILL "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
  done
  [ ${#pids[@]} -eq 0 ] || say "stopped ${names[*]} (pids ${pids[*]})"
  if [ -n "${KEEP_WORKDIR:-}" ]; then say "kept $w"; else rm -rf "$w"; fi
  exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

logs() { # print the tail of each daemon log, for a failure
  local f
  for f in "$w"/*.log "$w"/slurm-*.out; do
    if [ -f "$f" ]; then echo "--- $f"; tail -n 20 "$f"; fi
  done >&2
}
# up NAME SECONDS CMD...: wait until CMD succeeds, or fail naming NAME.
up() {
  local name=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || { logs; fail "$name exited at start (pid ${pids[-1]}); its log is above"; }
    sleep 0.1
  done
  logs
  fail "$name did not come up within $secs s (pid ${pids[-1]}); logs above"
}
free_port() { # a TCP port nothing listens on
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  fail "no free TCP port found"
}

host=$(hostname -s)
ctld_port=$(free_port)
slurmd_port=$(free_port)
[ "$ctld_port" != "$slurmd_port" ] || slurmd_port=$((ctld_port + 1))
mkdir -p "$w/state" "$w/spool"
head -c 1024 /dev/urandom >"$w/munge.key"
chmod 600 "$w/munge.key"
# The node is declared with 48 CPUs and 16 GB (SlurmdParameters=
# config_overrides) so that the example's own requests, 16 CPUs and 4G per
# task, fit unchanged for 3 tasks at once; nothing enforces them here.
cat >"$SLURM_CONF" <<CONF
ClusterName=qconv-e2e
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$w/munge.sock
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$w/state
SlurmdSpoolDir=$w/spool
SlurmctldPidFile=$w/slurmctld.pid
SlurmdPidFile=$w/slurmd.pid
NodeName=qconv-e2e NodeHostname=$host NodeAddr=127.0.0.1 CPUs=48 RealMemory=16384 State=UNKNOWN
PartitionName=e2e Nodes=qconv-e2e Default=YES MaxTime=10 State=UP
CONF

munged --foreground --force --key-file="$w/munge.key" --socket="$w/munge.sock" \
  --pid-file="$w/munged.pid" --seed-file="$w/munged.seed" >>"$w/munged.log" 2>&1 &
names+=(munged) pids+=($!)
up munged 10 bash -c "munge -S '$w/munge.sock' -n | unmunge -S '$w/munge.sock'"
slurmctld -D -i -f "$SLURM_CONF" >>"$w/slurmctld.log" 2>&1 &
names+=(slurmctld) pids+=($!)
up slurmctld 20 scontrol ping
slurmd -D -N qconv-e2e -f "$SLURM_CONF" >>"$w/slurmd.log" 2>&1 &
names+=(slurmd) pids+=($!)
up slurmd 30 bash -c "sinfo -h -n qconv-e2e -o %t | grep -qx idle"
say "cluster up in $((SECONDS - t0)) s: munged, slurmctld, slurmd (pids ${pids[*]}), ports $ctld_port/$slurmd_port"

# qconv for the jobs, on PATH as the example expects; the one-process
# reference conversion.
mkdir -p "$w/bin"
go build -o "$w/bin/qconv" ./cmd/qconv
export PATH="$w/bin:$PATH"
export SBATCH_OUTPUT="$w/slurm-%j.out"
SRC=testdata/golden/models/tiny-llama-bf16 DST=$w/parts N=3 FLAGS="--max-shard-size 100KB"
qconv convert "$SRC" "$w/one" $FLAGS --progress never >/dev/null

# The example refuses an array that does not number its tasks 0..N-1.
if out=$(SLURM_ARRAY_TASK_ID=1 SLURM_ARRAY_TASK_COUNT=3 SLURM_ARRAY_TASK_MIN=1 SLURM_ARRAY_TASK_MAX=3 \
  bash examples/slurm-array.sh "$SRC" "$DST" 2>&1); then
  fail "examples/slurm-array.sh ran with --array=1-3"
fi
grep -q -- "--array must be 0-2" <<<"$out" || fail "examples/slurm-array.sh with --array=1-3 said: $out"

# The commands of the example's header (and the README), as they are there.
for c in 'jid=$(sbatch --parsable --array=0-$((N-1)) examples/slurm-array.sh "$SRC" "$DST" $FLAGS)' \
  'sbatch --parsable --dependency=afterok:$jid --wrap "qconv convert $SRC $DST $FLAGS --finalize"'; do
  grep -qxF "#   $c" examples/slurm-array.sh || fail "examples/slurm-array.sh's header no longer shows: $c"
done
jid=$(sbatch --parsable --array=0-$((N-1)) examples/slurm-array.sh "$SRC" "$DST" $FLAGS)
fid=$(sbatch --parsable --dependency=afterok:$jid --wrap "qconv convert $SRC $DST $FLAGS --finalize")
jobs="$jid $fid"
say "submitted array job $jid (3 tasks) and finalize job $fid (afterok:$jid)"

field() { scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p"; }
deadline=$((SECONDS + 120))
while :; do
  state=$(field "$fid" JobState)
  case $state in
    COMPLETED) break ;;
    FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED)
      logs; fail "finalize job $fid ended $state" ;;
  esac
  if [ "$(field "$fid" Reason)" = DependencyNeverSatisfied ]; then
    logs; fail "an array task failed, so finalize job $fid can never run; task states: $(field "$jid" JobState | tr '\n' ' ')"
  fi
  [ $SECONDS -lt $deadline ] || { squeue >&2 || true; logs; fail "jobs not done within 120 s (finalize job $fid: ${state:-unknown})"; }
  sleep 0.5
done

# Every task of the array ran and converted its own part.
states=$(field "$jid" JobState | sort | uniq -c | tr -s ' \n' ' ')
[ "$(field "$jid" JobState | grep -cx COMPLETED)" = "$N" ] || { logs; fail "array tasks: $states, want $N COMPLETED"; }
for i in $(seq 0 $((N - 1))); do
  grep -l "part $i/$N" "$w"/slurm-*.out >/dev/null || { logs; fail "no task log says \"part $i/$N\""; }
done
diff -r "$w/one" "$DST" || fail "the Slurm array + finalize result differs from a one-process conversion"
say "OK: $N array tasks + afterok finalize, byte-identical to one process ($(ls "$DST" | wc -l) files) in $((SECONDS - t0)) s"
