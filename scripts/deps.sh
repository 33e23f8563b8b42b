#!/usr/bin/env bash
# Installs the Debian packages vmvault's tests and demo need, when they are
# missing and we are root. Never fails the build by itself: a test that needs a
# missing tool skips (or fails under VMVAULT_REQUIRE_TOOLS=1) with a reason.
set -euo pipefail

# tool -> Debian package
declare -A pkgs=(
  [qemu-img]=qemu-utils [mkntfs]=ntfs-3g [ntfs-3g]=ntfs-3g [sgdisk]=gdisk [sfdisk]=fdisk
  [mkfs.ext4]=e2fsprogs [mkfs.vfat]=dosfstools [mcopy]=mtools [fls]=sleuthkit
  [vhdiinfo]=libvhdi-utils [fusermount3]=fuse3 [pkg-config]=pkg-config
)
missing=()
for tool in "${!pkgs[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${pkgs[$tool]}")
done
/usr/bin/python3 -c 'import pyvhdi' >/dev/null 2>&1 || missing+=(python3-libvhdi)
[ -e /usr/include/fuse3/fuse.h ] || missing+=(libfuse3-dev)
if [ "${#missing[@]}" -eq 0 ]; then exit 0; fi
# de-duplicate
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing packages (run as root to install): ${missing[*]}" >&2
  exit 0
fi
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q "${missing[@]}" >/dev/null
