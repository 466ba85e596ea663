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
# Rebuilt only when the fragment (or this script) changed since the last
# successful build.
stamp="$(cat "$repo/microvm/lean-kernel.config" "$repo/scripts/build-lean-kernel.sh" | sha256sum | cut -c1-16)"
if [[ -f arch/x86/boot/bzImage && "$(cat .isolab-stamp 2>/dev/null)" == "$stamp" ]]; then
    echo "$src/arch/x86/boot/bzImage"
    exit 0
fi
rm -f .isolab-stamp
make -s tinyconfig
scripts/kconfig/merge_config.sh -m .config "$repo/microvm/lean-kernel.config" >/dev/null
make -s olddefconfig
# merge_config.sh only warns when Kconfig drops a value (a missing
# dependency); a lean kernel without, say, virtio-blk would fail much later.
missing=0
while IFS= read -r line; do
    [[ "$line" =~ ^CONFIG_([A-Z0-9_]+)=(.*)$ ]] || continue
    opt="${BASH_REMATCH[1]}" want="${BASH_REMATCH[2]}"
    if [[ "$want" == n ]]; then
        grep -qE "^CONFIG_$opt=[ym]" .config || continue
    else
        grep -qx "CONFIG_$opt=$want" .config && continue
    fi
    echo "lean-kernel.config asks for CONFIG_$opt=$want but Kconfig did not keep it (a dependency is missing)" >&2
    missing=1
done < "$repo/microvm/lean-kernel.config"
[[ $missing == 0 ]] || exit 1
make -s -j"$(nproc)" bzImage
echo "$stamp" > .isolab-stamp
echo "$src/arch/x86/boot/bzImage"
