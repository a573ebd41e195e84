#!/usr/bin/env bash
# Install and start a real one-node Slurm cluster (recipe: shared/INFRA.md) with its
# state under $1. Prints the SLURM_CONF path. No cgroup plugins, no accounting.
set -euo pipefail
W=$(realpath "${1:?usage: slurm-up.sh STATE_DIR}")
export DEBIAN_FRONTEND=noninteractive
if ! command -v slurmctld >/dev/null; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
mkdir -p /run/munge "$W/state" "$W/spool" "$W/log"
chown munge:munge /run/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
H=$(hostname)
cat > "$W/slurm.conf" <<CONF
ClusterName=ci
SlurmctldHost=$H
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=15
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool
SlurmctldPidFile=$W/slurmctld.pid
SlurmdPidFile=$W/slurmd.pid
SlurmctldLogFile=$W/log/slurmctld.log
SlurmdLogFile=$W/log/slurmd.log
NodeName=$H CPUs=2 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
export SLURM_CONF="$W/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^idle'; then
        echo "$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
echo "slurm did not come up; logs in $W/log" >&2
cat "$W"/log/*.log >&2 || true
exit 1
