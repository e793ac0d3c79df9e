#!/bin/bash
# Batch script of the example Slurm queue, rendered per worker into <work_dir>/submit.sh. The
# placeholders (pilot_command, worker_id, queue, work_dir, log_dir, cores, memory_mb, disk_mb,
# walltime_seconds, walltime_minutes, server_url, partition, account) are written in braces; write
# doubled braces for literal ones, e.g. $HOME or ${{HOME}} in shell code.
#SBATCH --job-name=panda-{queue}-{worker_id}
#SBATCH --partition={partition}
#SBATCH --output={log_dir}/slurm-%j.out
#SBATCH --error={log_dir}/slurm-%j.err
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task={cores}
#SBATCH --mem={memory_mb}M
#SBATCH --time={walltime_minutes}
# The pilot gets SIGTERM when the time limit nears, so it can report before it is killed.
#SBATCH --signal=TERM@120

export PANDA_WORKER_ID={worker_id}
echo "worker {worker_id} of queue {queue} on $(hostname) in $PWD"
exec {pilot_command}
