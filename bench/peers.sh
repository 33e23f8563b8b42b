#!/usr/bin/env bash
# bench/peers.sh: vmvault against restic on the same images, in the same run.
#
#   bench/peers.sh IMAGE.vhdx IMAGE-v2.vhdx WORKDIR [RUNS]
#
# IMAGE and IMAGE-v2 are the reference image and its churned version
# (../shared/tools/make-reference-image.sh builds both). WORKDIR gets the
# repositories, restore targets and logs (WORKDIR/logs); it must be outside
# the project and have room for ~4x the image's allocated data. RUNS
# (default 3) rounds of, interleaved so both tools see the same machine
# load:
#   full         backup IMAGE into a fresh repository
#   incremental  backup IMAGE-v2 into the same repository (vmvault: same --vm)
#   restore      restore the latest point (IMAGE-v2): restic restore latest;
#                vmvault restore --format raw and --format vhdx
# Each figure is the median of the runs: wall seconds, CPU seconds
# (user+sys), peak RSS. Sizes are of the last round: restic's repository
# (du -sb; restic always encrypts and has no parity), vmvault's stored bytes
# (blobs before parity, as `backup --json` reports) and its repository on
# disk (du -sb: RS parity, index and catalog included).
#
# Environment: VMVAULT (binary, default: go build ./cmd/vmvault into
# WORKDIR), RESTIC (default restic), VMVAULT_ENCRYPT=1 to compare with an
# encrypted vmvault repository, VMVAULT_INIT (extra `vmvault init` flags,
# e.g. "--compression zstd"). Page cache: each image is read once (cat)
# before each backup, so both tools start from the same warm cache. Before
# each restore the page cache is dropped (as root; COLD_RESTORE=0 keeps it),
# so both tools restore from a repository on disk, as an administrator's
# restore does hours after the backup: vmvault writes its shards with
# O_DIRECT, past the cache, while restic's packs would still be cached.
# TABLE_ONLY=1 prints the table of the runs already in WORKDIR/logs.
set -euo pipefail

if [ $# -lt 3 ]; then
	sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//' | head -n -1
	exit 2
fi
IMG1=$(realpath "$1")
IMG2=$(realpath "$2")
WORK=$(realpath -m "$3")
RUNS=${4:-3}
RESTIC=${RESTIC:-restic}
for t in jq awk "$RESTIC" /usr/bin/time; do
	command -v "$t" >/dev/null || { echo "peers.sh: $t not found" >&2; exit 1; }
done
mkdir -p "$WORK/logs"
if [ -z "${VMVAULT:-}" ]; then
	here=$(cd "$(dirname "$0")/.." && pwd)
	(cd "$here" && go build -o "$WORK/vmvault" ./cmd/vmvault)
	VMVAULT=$WORK/vmvault
fi
export RESTIC_PASSWORD=peers-bench
if [ "${VMVAULT_ENCRYPT:-0}" = 1 ]; then
	export VMVAULT_PASSWORD=peers-bench
	ENC=(--encrypt)
else
	export VMVAULT_PASSWORD=
	ENC=()
fi
LOG=$WORK/logs

# timed NAME RUN CMD...: runs CMD under /usr/bin/time, appends
# "NAME wall cpu rss_kib" to $LOG/times, stdout to $LOG/NAME.RUN.out.
timed() {
	local name=$1 run=$2
	shift 2
	/usr/bin/time -f "%e %U %S %M" -o "$LOG/$name.$run.time" "$@" >"$LOG/$name.$run.out" 2>"$LOG/$name.$run.err" || {
		echo "peers.sh: $name run $run failed:" >&2
		tail -5 "$LOG/$name.$run.err" >&2
		exit 1
	}
	read -r wall usr sys rss <"$LOG/$name.$run.time"
	echo "$name $wall $(awk -v u="$usr" -v s="$sys" 'BEGIN { print u + s }') $rss" >>"$LOG/times"
}
warm() { cat "$@" >/dev/null; }
COLD=${COLD_RESTORE:-1}
if [ "$COLD" = 1 ] && ! [ -w /proc/sys/vm/drop_caches ]; then
	echo "peers.sh: cannot drop the page cache (not root): restores start warm" >&2
	COLD=0
fi
# cold: drop the page cache before a restore (see the header).
cold() { if [ "$COLD" = 1 ]; then sync && echo 3 >/proc/sys/vm/drop_caches; fi; }

if [ "${TABLE_ONLY:-0}" != 1 ]; then
	: >"$LOG/times"
	echo "# $(date -u +%FT%TZ) $(uptime | sed 's/.*load/load/'); $(nproc) CPUs; $($RESTIC version | head -1)"
	echo "# vmvault $("$VMVAULT" --version 2>/dev/null | tail -1); images $IMG1 $IMG2; restores from $([ "$COLD" = 1 ] && echo "a dropped" || echo "a warm") page cache"
	for run in $(seq 1 "$RUNS"); do
		rr=$WORK/restic-repo vr=$WORK/vmvault-repo
		rm -rf "$rr" "$vr" "$WORK/restore"
		"$RESTIC" -r "$rr" init -q >/dev/null
		# shellcheck disable=SC2086 # VMVAULT_INIT is a list of flags
		"$VMVAULT" init --repo "$vr" "${ENC[@]}" ${VMVAULT_INIT:-} >/dev/null

		warm "$IMG1"
		timed restic-full "$run" "$RESTIC" -r "$rr" backup -q "$IMG1"
		warm "$IMG1"
		timed vmvault-full "$run" "$VMVAULT" backup --json --repo "$vr" --vm ref "$IMG1"
		warm "$IMG2"
		timed restic-incr "$run" "$RESTIC" -r "$rr" backup -q "$IMG2"
		warm "$IMG2"
		timed vmvault-incr "$run" "$VMVAULT" backup --json --repo "$vr" --vm ref "$IMG2"

		mkdir -p "$WORK/restore"
		cold
		timed restic-restore "$run" "$RESTIC" -r "$rr" restore latest -q --target "$WORK/restore/restic"
		rm -rf "$WORK/restore/restic"
		cold
		timed vmvault-restore-raw "$run" "$VMVAULT" restore -q --repo "$vr" --vm ref --to "$WORK/restore/raw" --format raw
		rm -rf "$WORK/restore/raw"
		cold
		timed vmvault-restore-vhdx "$run" "$VMVAULT" restore -q --repo "$vr" --vm ref --to "$WORK/restore/vhdx" --format vhdx
		rm -rf "$WORK/restore/vhdx"
		echo "# run $run done $(date -u +%T) $(uptime | sed 's/.*load/load/')"
	done
fi

# median NAME FIELD (2 wall, 3 cpu, 4 rss)
median() {
	awk -v n="$1" -v f="$2" '$1 == n { print $f }' "$LOG/times" | sort -g |
		awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
row() { # label ours peer target_ratio
	local ow pw
	ow=$(median "$2" 2)
	pw=$(median "$3" 2)
	printf "%-22s %8s %8s %8s %8s %9s %9s %7sx %6s\n" "$1" "$ow" "$pw" "$(median "$2" 3)" "$(median "$3" 3)" \
		"$(awk -v k="$(median "$2" 4)" 'BEGIN { printf "%.0f", k / 1024 }')" \
		"$(awk -v k="$(median "$3" 4)" 'BEGIN { printf "%.0f", k / 1024 }')" \
		"$(awk -v p="$pw" -v o="$ow" 'BEGIN { printf "%.2f", p / o }')" "$4"
}
echo
printf "%-22s %8s %8s %8s %8s %9s %9s %8s %6s\n" "medians of $RUNS" "ours_s" "restic_s" "ours_cpu" "rst_cpu" "ours_MiB" "rst_MiB" "speedup" "target"
row "full backup" vmvault-full restic-full ">=4x"
row "incremental (v2)" vmvault-incr restic-incr ">=5x"
row "restore raw" vmvault-restore-raw restic-restore ">=2x"
row "restore vhdx" vmvault-restore-vhdx restic-restore ">=2x"

stored=0
for f in "$LOG"/vmvault-full."$RUNS".out "$LOG"/vmvault-incr."$RUNS".out; do
	stored=$((stored + $(jq '.bytes_stored' "$f")))
done
rsz=$(du -sb "$WORK/restic-repo" | cut -f1)
vsz=$(du -sb "$WORK/vmvault-repo" | cut -f1)
echo
printf "repository after both backups: restic %d MiB (du); vmvault stored %d MiB before parity (target <= restic), %d MiB on disk with RS parity, index, catalog\n" \
	$((rsz >> 20)) $((stored >> 20)) $((vsz >> 20))
echo
echo "vmvault stages (last run):"
for k in full incr; do
	jq -r --arg k "$k" '"  \($k): " + ((.stages // {}) | to_entries | map("\(.key)=\(.value)") | join(" "))' "$LOG/vmvault-$k.$RUNS.out"
done
