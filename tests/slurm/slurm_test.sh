#!/usr/bin/env bash
# `loftq model --shard K/N` under a real Slurm: a one-node cluster on this
# machine (munged, slurmctld, slurmd, a minimal slurm.conf in a temporary
# directory), the shipped examples/slurm/submit.sh submitting the array and
# the dependent merge, and the merged output compared byte for byte with an
# unsharded run. Everything the test starts is stopped when it exits.
#
#   slurm_test.sh LOFTQ MODELTOOL WORKDIR SOURCE_DIR
#
# Exit 77 (skipped) without Slurm's and munge's binaries or without root
# (slurmd runs the jobs as their submitting user and needs root for that);
# .ci/run installs Debian's slurm-wlm and munge, so CI runs it.
set -uo pipefail
LOFTQ=$(realpath "$1") TOOL=$(realpath "$2") WORK=$3 SRC=$(realpath "$4")

for b in munged slurmctld slurmd sbatch squeue scontrol sinfo; do
  if ! command -v "$b" >/dev/null && [ ! -x "/usr/sbin/$b" ]; then
    echo "SKIP: $b not found (apt-get install slurm-wlm munge)"
    exit 77
  fi
done
if [ "$(id -u)" != 0 ]; then
  echo "SKIP: a local Slurm cluster needs root"
  exit 77
fi
export PATH=$PATH:/usr/sbin

fail() { echo "FAIL: $*" >&2; for f in "$WORK"/log/*.log "$WORK"/run/*.out; do [ -f "$f" ] && { echo "--- $f" >&2; tail -20 "$f" >&2; }; done; exit 1; }

rm -rf "$WORK"
mkdir -p "$WORK"/{etc,log,state,spool,munge,run}
chmod 700 "$WORK" "$WORK/munge"
WORK=$(realpath "$WORK")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
}
trap cleanup EXIT

# Free ports of the loopback: chosen from the test's own process id, then
# checked against the listening sockets.
port_free() { ! (ss -ltnH 2>/dev/null || netstat -ltn 2>/dev/null) | awk '{print $4}' | grep -q ":$1\$"; }
base=$((20000 + ($$ % 20000)))
while ! port_free "$base" || ! port_free $((base + 1)); do base=$((base + 2)); done

# munge: a fresh key, its own socket.
dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$WORK/munge/munge.key"
sock=$WORK/munge/munge.socket
munged --force --key-file="$WORK/munge/munge.key" --socket="$sock" --pid-file="$WORK/munge/munged.pid" \
  --log-file="$WORK/log/munged.log" --seed-file="$WORK/munge/seed" || fail "munged did not start"
for _ in $(seq 50); do [ -s "$WORK/munge/munged.pid" ] && break; sleep 0.1; done
pids+=("$(cat "$WORK/munge/munged.pid")")

node=$(hostname -s)
cpus=$(nproc)
mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2))
conf=$WORK/etc/slurm.conf
cat > "$conf" <<EOF
ClusterName=loftqtest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$base
SlurmdPort=$((base + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool/%n
SlurmctldPidFile=$WORK/run/slurmctld.pid
SlurmdPidFile=$WORK/run/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$conf
slurmctld -c -f "$conf" || fail "slurmctld did not start"
slurmd -f "$conf" || fail "slurmd did not start"
for _ in $(seq 100); do [ -s "$WORK/run/slurmctld.pid" ] && [ -s "$WORK/run/slurmd.pid" ] && break; sleep 0.1; done
pids+=("$(cat "$WORK/run/slurmd.pid" 2>/dev/null)" "$(cat "$WORK/run/slurmctld.pid" 2>/dev/null)")
idle=
for _ in $(seq 150); do
  state=$(sinfo -h -n "$node" -o %t 2>/dev/null)
  case "$state" in idle*|mix*|alloc*) idle=1; break ;; esac
  sleep 0.2
done
[ -n "$idle" ] || fail "the node never became idle (state '$state')"
echo "cluster up after ${SECONDS} s"

# A small sharded checkpoint, the unsharded reference run, then the array.
cd "$WORK/run" || fail "cd"
"$TOOL" synth ck BF16 2 2 64 96 || fail "modeltool synth"
opts=(--rank 8 --iters 2 --packed)
"$LOFTQ" model --input ck --output full --quiet "${opts[@]}" || fail "unsharded run"
ids=$(LOFTQ=$LOFTQ "$SRC/examples/slurm/submit.sh" 3 "$WORK/run/ck" "$WORK/run/parts" "$WORK/run/merged" "${opts[@]}") ||
  fail "submit.sh"
echo "$ids"
merge=$(echo "$ids" | sed -n 's/.*merge job \([0-9]*\).*/\1/p')
[ -n "$merge" ] || fail "no merge job id in '$ids'"
# Done when the merge job has left the queue (MinJobAge keeps its record for scontrol).
for _ in $(seq 600); do
  st=$(scontrol show job "$merge" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
  case "$st" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break ;; esac
  sleep 0.1
done
[ "$st" = COMPLETED ] || fail "merge job $merge ended as '$st'"
echo "array and merge done after ${SECONDS} s"
for k in 1 2 3; do
  [ -f "parts/shard-$k-of-3/shard_model.safetensors" ] || fail "shard $k/3 missing"
done

# The merge equals the unsharded run: every file, byte for byte (the report
# records timings, so only its tensors' errors are compared).
[ "$(cd full && ls | LC_ALL=C sort)" = "$(cd merged && ls | LC_ALL=C sort)" ] || fail "different files in full and merged"
for f in $(cd full && ls); do
  [ "$f" = loftq_report.json ] && continue
  cmp -s "full/$f" "merged/$f" || fail "$f differs between the unsharded run and the Slurm merge"
done
"$TOOL" check ck merged 8 8 || fail "modeltool check of the merged output"
echo "PASS: 3 array tasks and a dependent merge under Slurm equal the unsharded run"
