#!/usr/bin/env bash
# A single-node Slurm on this machine for the Slurm plugin's tests (Debian/Ubuntu, no systemd needed).
#
# Installs slurm-wlm and munge with apt-get when missing, writes /etc/slurm/slurm.conf for this host,
# starts munged, slurmctld and slurmd, and waits until `sinfo` shows the node idle. Finished jobs are
# recorded with jobcomp/filetxt, so `sacct -c` answers without slurmdbd. Safe to run again: daemons
# that run with the same configuration are left alone.
#
# It refuses to overwrite a slurm.conf it did not write (a real cluster's); PANDA_SLURM_FORCE=1 overrides.
# PANDA_SLURM_CPUS (default 16) is the CPU count advertised for the node: more than the machine has,
# so many small test jobs run at once. Exits non-zero, with the daemons' logs, if Slurm does not come up.
# Usage: bash scripts/slurm-up.sh        (stop with scripts/slurm-down.sh)
set -euo pipefail

started=$(date +%s)
marker="# written by panda-rs scripts/slurm-up.sh"
conf=/etc/slurm/slurm.conf
cpus=${PANDA_SLURM_CPUS:-16}
timeout=${PANDA_SLURM_TIMEOUT:-90}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
fail() {
  echo "slurm-up: $*" >&2
  for log in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log; do
    [ -r "$log" ] && { echo "--- last lines of $log" >&2; tail -n 20 "$log" >&2; }
  done
  exit 1
}

# 1. Packages.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || fail "slurm-wlm and munge are missing and there is no apt-get; install them by hand"
  echo "slurm-up: installing slurm-wlm and munge"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
[ -f /etc/munge/munge.key ] || as_root /usr/sbin/mungekey --create >/dev/null 2>&1 \
  || as_root /usr/sbin/create-munge-key >/dev/null 2>&1 || fail "no /etc/munge/munge.key and cannot create one"

# 2. Configuration: generated for this host at run time (never commit a host name).
host=$(hostname -s)
memory=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 }' /proc/meminfo)
new_conf=$(cat <<CONF
$marker
ClusterName=panda-test
SlurmctldHost=$host
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ReturnToService=2
# Start batch jobs at once instead of every few seconds (the default batch_sched_delay is 3 s).
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# No cgroups needed: works in containers and sandboxes.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: finished jobs go to a text file that \`sacct -c\` reads.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
MpiDefault=none
MailProg=/bin/true
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=5
# Lets the node advertise more CPUs than the machine has.
SlurmdParameters=config_overrides
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
)
if [ -f "$conf" ] && ! grep -qxF "$marker" "$conf" && [ "${PANDA_SLURM_FORCE:-0}" != 1 ]; then
  fail "$conf exists and was not written by this script (a real cluster?); set PANDA_SLURM_FORCE=1 to replace it"
fi

alive() { [ -f "$1" ] && as_root kill -0 "$(cat "$1")" 2>/dev/null; }
stop() { # pid file
  alive "$1" || return 0
  local pid; pid=$(cat "$1")
  as_root kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do as_root kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  as_root kill -9 "$pid" 2>/dev/null || true
}

if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$new_conf" ]; then
  # A changed configuration needs the daemons restarted.
  stop /run/slurm/slurmd.pid
  stop /run/slurm/slurmctld.pid
  printf '%s\n' "$new_conf" | as_root tee "$conf" >/dev/null
fi

# 3. Directories (/run is not persistent) and daemons, which daemonize themselves.
as_root install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm /run/slurm
as_root install -d /var/spool/slurmd
as_root install -d -o munge -g munge -m 0755 /run/munge
alive /run/munge/munged.pid || as_root runuser -u munge -- /usr/sbin/munged || fail "munged did not start"
alive /run/slurm/slurmctld.pid || as_root /usr/sbin/slurmctld || fail "slurmctld did not start"
alive /run/slurm/slurmd.pid || as_root /usr/sbin/slurmd || fail "slurmd did not start"

# 4. Ready: slurmd listens and the node is idle (after a restart, sinfo may show the saved state
# before slurmd is back, hence both checks).
deadline=$(( $(date +%s) + timeout ))
until (exec 3<>/dev/tcp/127.0.0.1/6818) 2>/dev/null && sinfo -h -N -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "the node is not idle after ${timeout}s: $(sinfo -h -N -o '%N %t %E' 2>&1)"
  sleep 0.25
done
sinfo -N -o '%N %P %t %c %m'
echo "slurm-up: ready in $(( $(date +%s) - started ))s"
