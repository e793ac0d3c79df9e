#!/usr/bin/env bash
# Stops the single-node Slurm that scripts/slurm-up.sh started (slurmd, slurmctld, munged), by their
# pid files. `--purge` also removes the saved job state, the job completion log and the generated
# slurm.conf (job IDs then start again at 1). Packages stay installed.
# Usage: bash scripts/slurm-down.sh [--purge]
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

for pid_file in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid /run/munge/munged.pid; do
  [ -f "$pid_file" ] || continue
  pid=$(cat "$pid_file")
  if as_root kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do as_root kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if as_root kill -0 "$pid" 2>/dev/null; then as_root kill -9 "$pid" 2>/dev/null || true; fi
  fi
  as_root rm -f "$pid_file"
done

if [ "${1:-}" = --purge ]; then
  if grep -qxF "# written by panda-rs scripts/slurm-up.sh" /etc/slurm/slurm.conf 2>/dev/null; then
    as_root rm -f /etc/slurm/slurm.conf
  fi
  as_root rm -rf /var/spool/slurmctld /var/spool/slurmd /var/log/slurm/jobcomp.log
fi
echo "slurm-down: stopped"
