#!/usr/bin/env bash
# bench/mount-peers.sh: issue 5's mount figures on the repositories bench/peers.sh leaves.
#
#   bench/mount-peers.sh WORKDIR [ROUNDS]
#
# WORKDIR is a bench/peers.sh work directory (vmvault-repo, restic-repo; VM
# "ref", disk vm1-v2, the reference image's guest file video.mp4 and folder
# ProgramData). Each figure gets a fresh `vmvault mount` (an empty FUSE page
# cache; the repository's shards are read once first, so they are
# page-cached): time from starting the mount to listing the NTFS root, dd
# bs=1M of the mounted .vhdx and .raw (with the mount's peak RSS), fio 4 KiB
# random reads for 10 s, cp of video.mp4, cp -a of ProgramData, then
# `vmvault files cp` of video.mp4 and `vmvault restore --format raw` (the
# rate a copy is compared with), and dd of the same .vhdx through `restic
# mount`. Needs root (FUSE), fio, restic, bc. VMVAULT: the binary (default:
# go build ./cmd/vmvault into WORKDIR).
set -euo pipefail
if [ $# -lt 1 ]; then
	sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//' | head -n -1
	exit 2
fi
WORK=$(realpath "$1")
ROUNDS=${2:-3}
R=$WORK/vmvault-repo
M=$WORK/mnt
RM=$WORK/restic-mnt
for t in fio restic bc mountpoint /usr/bin/time; do
	command -v "$t" >/dev/null || { echo "mount-peers.sh: $t not found" >&2; exit 1; }
done
if [ -z "${VMVAULT:-}" ]; then
	here=$(cd "$(dirname "$0")/.." && pwd)
	(cd "$here" && go build -o "$WORK/vmvault" ./cmd/vmvault)
	VMVAULT=$WORK/vmvault
fi
export RESTIC_PASSWORD=peers-bench
mkdir -p "$M" "$RM"
find "$R" -type f -exec cat {} + >/dev/null
G="volumes/vm1-v2-p2"
VIDEO="$G/Users/alice/デスクトップ/video.mp4"
P=
mnt() {
	while mountpoint -q "$M"; do sleep 0.1; done
	/usr/bin/time -f "%M" -o "$WORK/mount-rss" "$VMVAULT" mount --repo "$R" "$M" >"$WORK/mount.log" 2>&1 &
	P=$!
	for _ in $(seq 400); do mountpoint -q "$M" && [ -d "$M/ref" ] && return; sleep 0.02; done
	echo "mount-peers.sh: the mount did not come up (see $WORK/mount.log)" >&2
	exit 1
}
umnt() {
	pkill -INT -P "$P" || true
	wait "$P" 2>/dev/null || true
	while mountpoint -q "$M"; do sleep 0.1; done
}
trap 'mountpoint -q "$M" && umount "$M"; mountpoint -q "$RM" && umount "$RM"; true' EXIT
now() { date +%s.%N; }
dd1() { dd if="$1" of=/dev/null bs=1M 2>&1 | tail -1 | awk -F, '{print $NF}'; }
for round in $(seq "$ROUNDS"); do
	echo "# round $round, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
	s=$(now); mnt; ls "$M/ref/latest/$G/" >/dev/null; e=$(now); umnt
	echo "ls of the NTFS root after starting the mount: $(echo "$e - $s" | bc) s"
	mnt; r=$(dd1 "$M/ref/latest/disks/vm1-v2.vhdx"); umnt
	echo "dd .vhdx: $r, mount peak RSS $(cat "$WORK/mount-rss") KB"
	mnt; r=$(dd1 "$M/ref/latest/disks/vm1-v2.raw"); umnt
	echo "dd .raw: $r, mount peak RSS $(cat "$WORK/mount-rss") KB"
	mnt
	fio --name=rr --filename="$M/ref/latest/disks/vm1-v2.vhdx" --rw=randread --bs=4k --ioengine=psync \
		--runtime=10 --time_based --readonly --output-format=json >"$WORK/fio.json" 2>/dev/null
	umnt
	python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]["read"]; p = j["clat_ns"]["percentile"]
print("fio randread 4k: %.0f IOPS, p50 %.3f ms, p99 %.3f ms" % (j["iops"], p["50.000000"]/1e6, p["99.000000"]/1e6))' "$WORK/fio.json"
	mnt; ls -l "$M/ref/latest/$VIDEO" >/dev/null
	s=$(now); cp "$M/ref/latest/$VIDEO" "$WORK/video.cp"; e=$(now); umnt; rm -f "$WORK/video.cp"
	echo "cp video.mp4 from the mount: $(echo "$e - $s" | bc) s"
	rm -rf "$WORK/pd-copy"; mnt
	s=$(now); cp -a "$M/ref/latest/$G/ProgramData" "$WORK/pd-copy"; e=$(now); umnt
	echo "cp -a ProgramData: $(echo "$e - $s" | bc) s, $(find "$WORK/pd-copy" -type f | wc -l) files"
	rm -rf "$WORK/pd-copy"
	s=$(now); "$VMVAULT" files --repo "$R" cp "ref/latest/$VIDEO" "$WORK/video.fcp" >/dev/null 2>&1; e=$(now)
	echo "vmvault files cp video.mp4: $(echo "$e - $s" | bc) s"; rm -rf "$WORK/video.fcp"
	rm -rf "$WORK/rt"; s=$(now)
	sum=$("$VMVAULT" restore -q --repo "$R" --vm ref --to "$WORK/rt" --format raw 2>&1 | grep '^restored' || true); e=$(now)
	echo "vmvault restore --format raw: $(echo "$e - $s" | bc) s ($sum)"; rm -rf "$WORK/rt"
	restic -r "$WORK/restic-repo" mount "$RM" >"$WORK/restic-mount.log" 2>&1 &
	RP=$!
	for _ in $(seq 200); do [ -d "$RM/snapshots/latest" ] && break; sleep 0.1; done
	RF=$(find "$RM/snapshots/latest/" -name vm1-v2.vhdx | head -1)
	echo "dd .vhdx through restic mount: $(dd1 "$RF")"
	kill -INT "$RP"; wait "$RP" 2>/dev/null || true
	while mountpoint -q "$RM"; do sleep 0.1; done
done
