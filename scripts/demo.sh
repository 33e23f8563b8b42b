#!/usr/bin/env bash
# make demo: back up a sample VM into an embedded local repository, mount the
# recovery point read-only and copy one guest file out with plain cp.
set -euo pipefail
cd "$(dirname "$0")/.."
VMVAULT=${VMVAULT:-$PWD/bin/vmvault}
DEMO=${DEMO_DIR:-$PWD/demo}
REPO="$DEMO/repo"
MNT="$DEMO/mnt"
mkdir -p "$DEMO"

echo "== building a sample VM disk with real tools (qemu-img, sgdisk, mkntfs, mkfs.ext4, mkfs.vfat)"
./testdata/mkdisks.sh "$DEMO/disks" >/dev/null
VM="$DEMO/web01"
mkdir -p "$VM/Virtual Hard Disks"
cp --sparse=always "$DEMO/disks/gpt.vhdx" "$VM/Virtual Hard Disks/web01.vhdx"
"$VMVAULT" disk info "$VM/Virtual Hard Disks/web01.vhdx"

echo
echo "== vmvault init --repo $REPO"
rm -rf "$REPO"
export VMVAULT_PASSWORD=
"$VMVAULT" init --repo "$REPO"

echo
echo "== vmvault backup --repo $REPO --vm web01 $VM"
"$VMVAULT" backup --repo "$REPO" --vm web01 "$VM"
echo
echo "== a second backup is incremental (nothing changed: nothing is read)"
"$VMVAULT" backup --repo "$REPO" --vm web01 "$VM"
echo
"$VMVAULT" rp list --repo "$REPO"

want=$(awk -F'\t' '$1=="gpt.vhdx" && $2==2 && $4=="big.bin" {print $6}' "$DEMO/disks/manifest.tsv")
rm -rf "$DEMO/restore" && mkdir -p "$DEMO/restore"
echo
if [ -e /dev/fuse ] && [ "$(id -u)" -eq 0 ]; then
  echo "== vmvault mount --repo $REPO $MNT"
  mkdir -p "$MNT"
  mountpoint -q "$MNT" && fusermount3 -u "$MNT"
  "$VMVAULT" mount --repo "$REPO" "$MNT" &
  pid=$!
  trap 'kill -INT $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
  for _ in $(seq 50); do [ -e "$MNT/web01/latest" ] && break; sleep 0.1; done
  ls "$MNT/web01/latest" "$MNT/web01/latest/disks" "$MNT/web01/latest/volumes"
  echo
  echo "== ls $MNT/web01/latest/volumes/web01-p2   (the guest NTFS volume)"
  ls -l "$MNT/web01/latest/volumes/web01-p2"
  echo
  echo "== cp $MNT/web01/latest/volumes/web01-p2/big.bin $DEMO/restore/"
  cp "$MNT/web01/latest/volumes/web01-p2/big.bin" "$DEMO/restore/"
  qemu-img check "$MNT/web01/latest/disks/web01.vhdx" | tail -1
  kill -INT $pid; wait $pid || true
  trap - EXIT
else
  echo "== no FUSE here (needs /dev/fuse and root): vmvault files cp instead"
  "$VMVAULT" files --repo "$REPO" cp web01/latest/volumes/web01-p2/big.bin "$DEMO/restore/"
fi
got=$(sha256sum "$DEMO/restore/big.bin" | cut -d' ' -f1)
echo "sha256 of the guest file: $want"
echo "sha256 of the copy:       $got"
[ "$want" = "$got" ] || { echo "demo: MISMATCH" >&2; exit 1; }
echo "demo: OK"
