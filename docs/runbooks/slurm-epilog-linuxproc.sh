#!/bin/sh
# Slurm Epilog for clusters without cgroups (ProctrackType=proctrack/linuxproc or /pgid).
#
# Why: such a cluster follows a job's processes by parentage (or process group), so a process
# the job daemonized (double fork, setsid: reparented to init, its own session) survives
# scancel and the time limit. It still carries the job's SLURM_JOB_ID and SLURM_CLUSTER_NAME
# in its environment: at the job's end, on each of its nodes, this kills every process that does.
# Install (slurm.conf on every node): Epilog=/etc/slurm/epilog-linuxproc.sh ; runs as root.
[ -n "$SLURM_JOB_ID" ] && [ -n "$SLURM_CLUSTER_NAME" ] || exit 0
for environ in $(grep -lzx "SLURM_JOB_ID=$SLURM_JOB_ID" /proc/[0-9]*/environ 2>/dev/null); do
  pid=${environ#/proc/}
  pid=${pid%/environ}
  [ "$pid" != "$$" ] || continue
  grep -qzx "SLURM_CLUSTER_NAME=$SLURM_CLUSTER_NAME" "$environ" 2>/dev/null || continue
  # Slurm's own prolog and epilog scripts carry the job's variables too: leave them be
  grep -qz "^SLURM_SCRIPT_CONTEXT=" "$environ" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
done
exit 0
