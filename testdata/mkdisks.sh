#!/usr/bin/env bash
# mkdisks.sh OUTDIR -- build the guest-disk fixtures every vhdxfs test uses.
#
# Everything is made by real tools (qemu-img, sgdisk, sfdisk, mkntfs, ntfs-3g,
# mkfs.ext4 -d, mkfs.vfat + mtools) so that our readers are checked against
# bytes we did not write ourselves. The only exceptions are produced by
# internal/testdisks/cmd/vhdxgen, because no Debian tool can make them: a VHDX
# whose log must be replayed, and differencing (.avhdx) children.
#
# Output (see internal/testdisks for the Go view and partition starts):
#   gpt.vhdx  gpt.raw             dynamic VHDX (1 MiB blocks) of a GPT disk + its raw oracle
#   mbr-fixed.vhdx  mbr.raw       fixed VHDX of an MBR disk with a logical partition + oracle
#   nopart.raw                    whole-disk ext4, no partition table, sparse
#   dirty.vhdx  dirty.expected.raw    VHDX whose log MUST be replayed + expected bytes
#   base.vhdx  base.raw           parent of the chain (qemu-made) + its raw oracle
#   child.avhdx  child.expected.raw   differencing child of base.vhdx + spec bytes
#   orphan.avhdx                  child whose parent file does not exist
#   badlink.avhdx                 child whose parent exists but parent_linkage mismatches
#   manifest.tsv                  every guest file we put in, from the source trees
#   .complete                     written last; OUTDIR without it must not be used
#
# Idempotent: if OUTDIR/.complete exists nothing is done. The build happens in
# a temporary sibling directory that is renamed to OUTDIR at the very end, so a
# half-built OUTDIR never exists. Nothing is mounted except one ntfs-3g FUSE
# mount of an NTFS image *file* (mkntfs/ntfscp cannot create directories);
# an EXIT trap always unmounts it. Needs root for that mount.
set -euo pipefail
export LC_ALL=C.UTF-8 LANG=C.UTF-8 # mtools/ntfs-3g convert names from the locale
export TZ=UTC

die() { echo "mkdisks: $*" >&2; exit 1; }
[[ $# -eq 1 ]] || die "usage: $0 OUTDIR"
out=$1
[[ -f $out/.complete ]] && exit 0

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
py=/usr/bin/python3 # Debian's python (python3-libvhdi); a pyenv shim may shadow it

mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
work=$(mktemp -d "$out.tmp.XXXXXX")
mnt=""
cleanup() {
	local rc=$?
	if [[ -n $mnt ]] && mountpoint -q "$mnt"; then
		umount "$mnt" 2>/dev/null || fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" || true
	fi
	# Never rm through a live mount.
	if [[ -n $mnt ]] && mountpoint -q "$mnt"; then
		echo "mkdisks: $mnt still mounted, leaving $work" >&2
	else
		rm -rf "$work"
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

cd "$work"
mkdir src bin img
(cd "$repo" && go build -o "$work/bin/vhdxgen" ./internal/testdisks/cmd/vhdxgen)
gen=$work/bin/vhdxgen
rnd() { "$gen" rand "$1" "$2" >"$3"; } # deterministic pseudo-random file: SEED SIZE FILE

# A 5-level path whose full length exceeds 260 characters (Windows MAX_PATH).
longpath() {
	local p=$1 i
	for i in 1 2 3 4 5; do
		p+=/level$i-abcdefghijklmnopqrstuvwxyz-0123456789-ABCDEFGHIJKLMNOPQRSTUVWXYZ
	done
	echo "$p"
}

# ---------------------------------------------------------------- manifest
# One line per guest object, generated from the source trees (not from the
# images) so that readers are compared with what was meant to be there.
manifest=$work/img/manifest.tsv
printf 'image\tpart\tkind\tpath\tsize\tsha256\ttarget\n' >"$manifest"
add_tree() { # IMAGE PART DIR
	local image=$1 part=$2 dir=$3 p
	(cd "$dir" && find . -mindepth 1 -print0 | LC_ALL=C sort -z) | while IFS= read -r -d '' p; do
		p=${p#./}
		if [[ -L $dir/$p ]]; then
			printf '%s\t%s\tl\t%s\t%s\t\t%s\n' "$image" "$part" "$p" "$(stat -c %s "$dir/$p")" "$(readlink "$dir/$p")"
		elif [[ -d $dir/$p ]]; then
			printf '%s\t%s\td\t%s\t0\t\t\n' "$image" "$part" "$p"
		else
			local h
			h=$(sha256sum <"$dir/$p")
			printf '%s\t%s\tf\t%s\t%s\t%s\t\n' "$image" "$part" "$p" "$(stat -c %s "$dir/$p")" "${h%% *}"
		fi
	done >>"$manifest"
}

# ---------------------------------------------------------------- source trees
# FAT (EFI system partition): nested dirs, long and non-ASCII names, empty file.
s=src/gpt-p1
mkdir -p "$s/EFI/Boot" "$s/EFI/vmvault/nested/deeper" "$s/EFI/EmptyDir"
rnd fat-boot 70000 "$s/EFI/Boot/bootx64.efi"
echo "hello from the ESP" >"$s/EFI/vmvault/readme.txt"
echo "nested FAT file" >"$s/EFI/vmvault/nested/deeper/Deep File With Long Name.txt"
echo "ünïcödé on FAT" >"$s/EFI/vmvault/Ünïcödé.txt"
: >"$s/EFI/vmvault/empty.txt"
rnd fat-multi 1300000 "$s/EFI/vmvault/multicluster.bin"

# NTFS: the hard parts of NTFS for a reader.
s=src/gpt-p2
mkdir -p "$s/日本語フォルダ" "$s/Ünïcödé" "$s/Folder A/Sub B/Sub C" "$(longpath "$s/long")"
echo "日本語の内容" >"$s/日本語フォルダ/ファイル.txt"
echo "umlauts" >"$s/Ünïcödé/Grüße.txt"
echo "emoji (UTF-16 surrogate pair)" >"$s/emoji-😀.txt"
echo "deep in folders" >"$s/Folder A/Sub B/Sub C/deep.txt"
echo "beyond MAX_PATH" >"$(longpath "$s/long")/long-path-file.txt"
: >"$s/empty.txt"
rnd ntfs-big $((6 << 20)) "$s/big.bin" # non-resident, several runs
# Sparse: 5 MiB apparent, two small data islands; the holes read as zeros.
truncate -s 5M "$s/sparse.bin"
echo "island at 1 MiB" | dd of="$s/sparse.bin" bs=1 seek=$((1 << 20)) conv=notrunc status=none
rnd ntfs-island 4096 /dev/stdout | dd of="$s/sparse.bin" bs=4096 seek=1000 conv=notrunc status=none
echo "small resident file" >"$s/resident.txt"
echo "file with an alternate data stream (main stream)" >"$s/ads.txt"
ln "$s/ads.txt" "$s/hardlink-to-ads.txt" # both names are in the manifest

# ext4 (GPT p3): symlinks, deep paths, empty, large, sparse, hard link.
s=src/gpt-p3
mkdir -p "$s/dir/sub/subsub" "$(longpath "$s/deep")" "$s/empty-dir" "$s/ünïcödé-dir"
echo "hello ext4" >"$s/hello.txt"
echo "deep ext4 file" >"$s/dir/sub/subsub/file.txt"
echo "beyond MAX_PATH on ext4" >"$(longpath "$s/deep")/leaf.txt"
: >"$s/empty"
rnd ext4-large $((8 << 20)) "$s/large.bin"
truncate -s 3M "$s/sparse.bin"
echo "ext4 island" | dd of="$s/sparse.bin" bs=1 seek=$((2 << 20)) conv=notrunc status=none
echo "ünïcödé" >"$s/ünïcödé-dir/日本語.txt"
ln -s hello.txt "$s/link-rel"
ln -s ../../hello.txt "$s/dir/sub/link-up"
ln -s /etc/vmvault-outside-target "$s/link-abs" # absolute, points outside the volume
ln -s missing-target "$s/link-dangling"
ln "$s/hello.txt" "$s/dir/hardlink.txt"

# MBR disk.
s=src/mbr-p1 # NTFS, root files only (via ntfscp: no mount needed)
mkdir -p "$s"
echo "ntfs on mbr" >"$s/mbr-ntfs.txt"
rnd mbr-ntfs 300000 "$s/data.bin"
s=src/mbr-p2 # FAT32 type 0x0c
mkdir -p "$s/DIR1/Sub"
echo "fat32 on mbr" >"$s/fat32.txt"
echo "in a subdir" >"$s/DIR1/Sub/inner.txt"
rnd mbr-fat 200000 "$s/DIR1/data.bin"
s=src/mbr-p5 # ext4 inside the extended partition
mkdir -p "$s/logical"
echo "ext4 in a logical partition" >"$s/logical.txt"
rnd mbr-ext4 500000 "$s/logical/data.bin"
ln -s ../logical.txt "$s/logical/link"

# Whole-disk ext4 (no partition table), 1 KiB blocks (mkfs's default for small
# filesystems, so readers meet block size != 4096 too).
s=src/nopart-p0
mkdir -p "$s/a/b"
echo "whole-disk ext4" >"$s/readme.txt"
echo "nested" >"$s/a/b/c.txt"
rnd nopart 1500000 "$s/a/random.bin"
ln -s a/b/c.txt "$s/link"

add_tree gpt.vhdx 1 src/gpt-p1
add_tree gpt.vhdx 2 src/gpt-p2
add_tree gpt.vhdx 3 src/gpt-p3
add_tree mbr-fixed.vhdx 1 src/mbr-p1
add_tree mbr-fixed.vhdx 2 src/mbr-p2
add_tree mbr-fixed.vhdx 5 src/mbr-p5
add_tree nopart.raw 0 src/nopart-p0

# ---------------------------------------------------------------- gpt.vhdx
# 200 MiB GPT: p1 ESP FAT32 @2048 (40 MiB), p2 NTFS @83968 (80 MiB),
# p3 ext4 @247808 (64 MiB). Keep internal/testdisks.Parts in sync.
truncate -s 200M gpt.disk
# (no -q: with it sgdisk 1.0.9 exits 0 without writing anything)
sgdisk -o -U 5AB2B6A4-7E3C-4C2B-9D0E-1F2A3B4C5D6E \
	-n1:2048:+40M -t1:ef00 -c1:esp -u1:11111111-2222-4333-8444-555555555501 \
	-n2:83968:+80M -t2:0700 -c2:windows -u2:11111111-2222-4333-8444-555555555502 \
	-n3:247808:+64M -t3:8300 -c3:linux -u3:11111111-2222-4333-8444-555555555503 \
	gpt.disk >/dev/null
# FAT32 needs >= 65525 clusters: -s 1 on 40 MiB. --offset writes in place.
mkfs.vfat -F 32 -s 1 -n ESPVOL -i 1234ABCD --offset 2048 gpt.disk $((40 * 1024)) >/dev/null 2>&1
fat="gpt.disk@@$((2048 * 512))"
mcopy -s -Q -i "$fat" src/gpt-p1/EFI ::/

# NTFS: mkntfs has no offset option; build the volume as its own file (with
# -p so the boot sector's hidden-sectors field is right), fill it through an
# ntfs-3g mount (ntfscp cannot mkdir), then dd it into place.
truncate -s 80M ntfs.img
mkntfs -F -Q -q -s 512 -c 4096 -p 83968 -H 255 -S 63 -L NTFSVOL ntfs.img 2>/dev/null
mkdir mnt
mnt=$work/mnt
# streams_interface=windows: "file:stream" names reach the named $DATA stream.
ntfs-3g -o streams_interface=windows ntfs.img "$mnt"
# tar keeps hard links as links and recreates sparse files with holes.
tar -C src/gpt-p2 --sparse -cf - . | tar -C "$mnt" --no-same-owner --no-same-permissions -xf -
echo "hidden stream content" >"$mnt/ads.txt:secret"
sync
umount "$mnt"
mnt=""
dd if=ntfs.img of=gpt.disk bs=1M seek=$((83968 * 512 >> 20)) conv=notrunc,sparse status=none
rm ntfs.img

mkfs.ext4 -F -q -b 4096 -L LINUXVOL -U 7d7a7c2e-0000-4000-8000-00000000e403 \
	-E offset=$((247808 * 512)),root_owner=0:0 -d src/gpt-p3 gpt.disk 64M

qemu-img convert -f raw -O vhdx -o subformat=dynamic,block_size=1M gpt.disk img/gpt.vhdx
qemu-img convert -f vhdx -O raw img/gpt.vhdx img/gpt.raw
cmp gpt.disk img/gpt.raw || die "gpt.raw differs from the source disk"
rm gpt.disk

# ---------------------------------------------------------------- mbr-fixed.vhdx
# 128 MiB MBR: p1 NTFS 0x07 @2048, p2 FAT32 LBA 0x0c @83968 (bootable),
# p3 extended 0x0f @165888, p5 ext4 (0x83) logical @167936.
truncate -s 128M mbr.disk
sfdisk -q --no-reread mbr.disk <<'EOF'
label: dos
label-id: 0x5eedf00d
start=2048, size=81920, type=7
start=83968, size=81920, type=c, bootable
start=165888, size=96256, type=f
start=167936, size=94208, type=83
EOF
truncate -s 40M ntfs.img
mkntfs -F -Q -q -s 512 -p 2048 -H 255 -S 63 -L MBRNTFS ntfs.img 2>/dev/null
for f in src/mbr-p1/*; do ntfscp -q ntfs.img "$f" "/$(basename "$f")"; done
dd if=ntfs.img of=mbr.disk bs=1M seek=1 conv=notrunc,sparse status=none
rm ntfs.img
mkfs.vfat -F 32 -s 1 -n MBRFAT -i 5EED0002 --offset 83968 mbr.disk $((40 * 1024)) >/dev/null 2>&1
fat="mbr.disk@@$((83968 * 512))"
mcopy -s -Q -i "$fat" src/mbr-p2/* ::/
mkfs.ext4 -F -q -b 4096 -L LOGICAL -U 7d7a7c2e-0000-4000-8000-00000000e405 \
	-E offset=$((167936 * 512)),root_owner=0:0 -d src/mbr-p5 mbr.disk $((94208 / 2))K
# block_state_zero=off gives a true fixed layout (every block state 6, in order).
qemu-img convert -f raw -O vhdx -o subformat=fixed,block_state_zero=off mbr.disk img/mbr-fixed.vhdx
qemu-img convert -f vhdx -O raw img/mbr-fixed.vhdx img/mbr.raw
cmp mbr.disk img/mbr.raw || die "mbr.raw differs from the source disk"
rm mbr.disk

# ---------------------------------------------------------------- nopart.raw
# truncate first so the image stays sparse (SEEK_HOLE finds holes).
truncate -s 64M img/nopart.raw
mkfs.ext4 -F -q -b 1024 -L NOPART -U 7d7a7c2e-0000-4000-8000-0000000e0000 \
	-E root_owner=0:0 -d src/nopart-p0 img/nopart.raw
"$py" - img/nopart.raw <<'EOF' || die "nopart.raw has no holes"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
h = os.lseek(fd, 0, os.SEEK_HOLE)
assert h < os.fstat(fd).st_size, "no hole"
EOF

# ---------------------------------------------------------------- dirty.vhdx
# 16 MiB with data in some 1 MiB blocks and zeros elsewhere; qemu's convert
# leaves one log entry per BAT update. vhdxgen dirty activates the newest one
# and wipes the on-disk BAT (VHDX-NOTES 1.4).
truncate -s 16M dirty.disk
for b in 0 1 3 4 9 15; do
	rnd "dirty-$b" $((1 << 20)) /dev/stdout | dd of=dirty.disk bs=1M seek=$b conv=notrunc status=none
done
qemu-img convert -f raw -O vhdx -o subformat=dynamic,block_size=1M dirty.disk img/dirty.vhdx
"$gen" dirty img/dirty.vhdx >/dev/null
# qemu must now refuse a read-only open (the log needs replaying) ...
if qemu-img info img/dirty.vhdx >/dev/null 2>&1; then die "qemu opens dirty.vhdx read-only: log not active"; fi
# ... and a read-write open replays it (on a copy: check -r all writes).
cp --sparse=always img/dirty.vhdx dirty.copy.vhdx
qemu-img check -q -r all dirty.copy.vhdx >/dev/null 2>&1 || true
qemu-img check -q dirty.copy.vhdx || die "dirty copy not clean after replay"
qemu-img convert -f vhdx -O raw dirty.copy.vhdx img/dirty.expected.raw
qemu-img compare -q -f raw -F raw img/dirty.expected.raw dirty.disk || die "replayed dirty.vhdx != source"
# A reader that ignores the log sees the wiped BAT: all zeros. Prove that the
# log matters by checking the expected bytes differ from an all-zero disk.
truncate -s 16M zeros.raw
if qemu-img compare -q -f raw -F raw img/dirty.expected.raw zeros.raw; then die "dirty: log does not matter"; fi
rm dirty.disk dirty.copy.vhdx zeros.raw

# ---------------------------------------------------------------- differencing chain
# base: 9.5 MiB (a partial last block), 1 MiB blocks, random data except block 8 (zeros).
truncate -s $((19 << 19)) base.disk
for b in 0 1 2 3 4 5 6 7 9; do
	n=$((1 << 20)); [[ $b -eq 9 ]] && n=$((1 << 19))
	rnd "base-$b" $n /dev/stdout | dd of=base.disk bs=1M seek=$b conv=notrunc status=none
done
qemu-img convert -f raw -O vhdx -o subformat=dynamic,block_size=1M base.disk img/base.vhdx
qemu-img convert -f vhdx -O raw img/base.vhdx img/base.raw
cmp base.disk img/base.raw || die "base.raw differs"
rm base.disk
"$gen" diff -parent img/base.vhdx -parent-raw img/base.raw -out img/child.avhdx \
	-relative '.\base.vhdx' -absolute '\\?\C:\VMs\vmvault\base.vhdx' \
	-expected child.model.raw -zero-ranges child.zero >/dev/null
"$gen" diff -parent img/base.vhdx -out img/orphan.avhdx -seed orphan \
	-relative '.\missing-parent.vhdx' -absolute '\\?\C:\VMs\vmvault\missing-parent.vhdx' >/dev/null
"$gen" diff -parent img/base.vhdx -out img/badlink.avhdx -seed badlink \
	-linkage '{0badf00d-0000-4000-8000-000000000001}' \
	-relative '.\base.vhdx' -absolute '\\?\C:\VMs\vmvault\base.vhdx' >/dev/null
# Capture first: with pipefail, grep -q exiting early SIGPIPEs the producer
# and fails the pipeline even though the line was found.
info=$(vhdiinfo img/child.avhdx)
grep -qi 'parent identifier' <<<"$info" || die "vhdiinfo: child has no parent identifier"
# Expected bytes from an independent reader (libvhdi) ...
"$py" - img/child.avhdx img/base.vhdx img/child.expected.raw child.zero <<'EOF'
import sys, pyvhdi
child, base, outp, zero = sys.argv[1:]
c = pyvhdi.file(); c.open(child)
p = pyvhdi.file(); p.open(base)
c.set_parent(p)
size = c.get_media_size()
with open(outp, "wb") as o:
    off = 0
    while off < size:
        n = min(1 << 20, size - off)
        o.write(c.read_buffer_at_offset(n, off))
        off += n
    # libvhdi 20210425 returns the PARENT's data for a PAYLOAD_BLOCK_ZERO
    # block of a child; MS-VHDX says such a block reads as zeros without
    # consulting the parent. The fixture follows the spec: zero those ranges.
    for line in open(zero):
        zoff, zlen = map(int, line.split())
        o.seek(zoff); o.write(b"\0" * zlen)
EOF
# ... must match the generator's own spec model byte for byte.
cmp img/child.expected.raw child.model.raw || die "libvhdi (ZERO-patched) != vhdxgen model"
rm child.model.raw child.zero

# ---------------------------------------------------------------- sanity checks
for f in img/gpt.vhdx img/mbr-fixed.vhdx img/base.vhdx; do
	qemu-img check -q "$f" || die "qemu-img check $f"
	vhdiinfo "$f" >/dev/null || die "vhdiinfo $f"
done
qemu-img compare -q -f vhdx -F raw img/gpt.vhdx img/gpt.raw
qemu-img compare -q -f vhdx -F raw img/mbr-fixed.vhdx img/mbr.raw
# The partition tables must say what internal/testdisks.Parts says.
[[ $(sfdisk -d img/gpt.raw | grep -o 'start= *[0-9]*' | tr -d ' ' | tr '\n' ' ') == "start=2048 start=83968 start=247808 " ]] ||
	die "gpt.raw partition table: $(sfdisk -d img/gpt.raw)"
[[ $(sfdisk -d img/mbr.raw | grep -o 'start= *[0-9]*' | tr -d ' ' | tr '\n' ' ') == "start=2048 start=83968 start=165888 start=167936 " ]] ||
	die "mbr.raw partition table: $(sfdisk -d img/mbr.raw)"
# Every partition must be readable by sleuthkit and contain our files.
for spec in "gpt.raw 2048 EFI/vmvault/readme.txt" "gpt.raw 83968 日本語フォルダ/ファイル.txt" \
	"gpt.raw 247808 dir/sub/subsub/file.txt" "mbr.raw 2048 mbr-ntfs.txt" \
	"mbr.raw 83968 DIR1/Sub/inner.txt" "mbr.raw 167936 logical.txt" "nopart.raw 0 a/b/c.txt"; do
	read -r f o p <<<"$spec"
	listing=$(fls -r -p -o "$o" "img/$f")
	grep -qF "$p" <<<"$listing" || die "fls: $p not on $f@$o"
done

chmod a-w img/*
touch img/.complete
# Another builder may have won the race (the Go side holds a lock, but the
# script can also be run by hand): only rename if OUTDIR is still missing.
if [[ -e $out ]]; then
	[[ -f $out/.complete ]] || die "$out exists but is incomplete; remove it"
else
	mv img "$out"
fi
