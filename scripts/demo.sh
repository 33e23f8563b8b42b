#!/usr/bin/env bash
# make demo: build a sample VM disk with real tools and show vmvault reading it.
set -euo pipefail
cd "$(dirname "$0")/.."
VMVAULT=${VMVAULT:-bin/vmvault}
DEMO=${DEMO_DIR:-demo}
mkdir -p "$DEMO"
echo "== building sample disks (qemu-img, sgdisk, mkntfs, mkfs.ext4, mkfs.vfat) into $DEMO/disks"
./testdata/mkdisks.sh "$DEMO/disks" >/dev/null
DISK="$DEMO/disks/gpt.vhdx"
echo
echo "== vmvault disk info $DISK"
"$VMVAULT" disk info "$DISK"
echo
echo "== vmvault disk ls -l $DISK p2   (the NTFS volume)"
"$VMVAULT" disk ls -l "$DISK" p2
echo
rm -rf "$DEMO/restore" && mkdir -p "$DEMO/restore"
echo "== vmvault disk cp $DISK p2/big.bin $DEMO/restore/"
"$VMVAULT" disk cp "$DISK" p2/big.bin "$DEMO/restore/"
want=$(awk -F'\t' '$1=="gpt.vhdx" && $2==2 && $4=="big.bin" {print $6}' "$DEMO/disks/manifest.tsv")
got=$(sha256sum "$DEMO/restore/big.bin" | cut -d' ' -f1)
echo "sha256 of the source file: $want"
echo "sha256 of the copy:        $got"
[ "$want" = "$got" ] || { echo "demo: MISMATCH" >&2; exit 1; }
echo "demo: OK"
