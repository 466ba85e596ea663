#!/usr/bin/env bash
# Builds isolab's lean microVM kernel from the distribution's kernel source
# package, with microvm/lean-kernel.config on top of tinyconfig. The build
# is cached outside the repository (default ~/.cache/isolab/lean-kernel).
#
#   sudo apt-get install linux-source build-essential bc bison flex libelf-dev libssl-dev
#   scripts/build-lean-kernel.sh            # prints the path of the bzImage
#   sudo target/release/isolab run --backend microvm --guest linux --kernel <that path> --json
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${ISOLAB_KERNEL_CACHE:-$HOME/.cache/isolab/lean-kernel}"
tarball="$(ls /usr/src/linux-source-*.tar.* 2>/dev/null | sort -V | tail -1 || true)"
if [[ -z "$tarball" ]]; then
    echo "no /usr/src/linux-source-*.tar.*: install it with: sudo apt-get install linux-source" >&2
    exit 1
fi
mkdir -p "$cache"
src="$cache/$(basename "$tarball" | sed 's/\.tar\..*//')"
if [[ ! -d "$src" ]]; then
    tar -C "$cache" -xf "$tarball"
fi
cd "$src"
make -s tinyconfig
scripts/kconfig/merge_config.sh -m .config "$repo/microvm/lean-kernel.config" >/dev/null
make -s olddefconfig
make -s -j"$(nproc)" bzImage
echo "$src/arch/x86/boot/bzImage"
