#!/bin/sh
# On a host with hardware KVM (VT-x/AMD-V), boots the distro kernel (or
# --kernel PATH) to the isolab agent a few times and prints boot-to-init
# and boot-to-ready medians. On a PVM host it stops early and says why.
#
#   cargo build --release
#   sudo scripts/linux-boot-times.sh [--kernel PATH] [--runs N]
#
# POSIX sh and awk only, so it also runs inside the nested test host
# (tests/nested.rs), which sets ISOLAB (the binary) and
# ISOLAB_NESTED_TCG=1: its figures are then labelled as emulated and mean
# nothing as performance.
set -eu
repo="$(cd "$(dirname "$0")/.." && pwd)"
isolab="${ISOLAB:-$repo/target/release/isolab}"
runs=5
kernel=""
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel) kernel="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        *) echo "usage: $0 [--kernel PATH] [--runs N]" >&2; exit 2 ;;
    esac
done
[ -x "$isolab" ] || { echo "build first: cargo build --release (or set ISOLAB to the isolab binary)" >&2; exit 1; }
if [ -d /sys/module/kvm_pvm ]; then
    echo "this host's KVM is PVM: a stock kernel cannot boot to init here; use a host with hardware KVM" >&2
    exit 1
fi
if [ "${ISOLAB_NESTED_TCG:-}" = 1 ]; then
    echo "nested-TCG: KVM inside QEMU's software emulation; these figures are not performance"
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
i=0
while [ "$i" -lt "$runs" ]; do
    i=$((i + 1))
    if [ -n "$kernel" ]; then
        "$isolab" run --backend microvm --guest linux --scenario startup --json --kernel "$kernel" > "$out/$i.json"
    else
        "$isolab" run --backend microvm --guest linux --scenario startup --json > "$out/$i.json"
    fi
done
# The report lists its marks as {"name": …, "ns": …} pairs, one field a
# line, before "phases_ns" (later marks are the guest's own clock):
# launch→mark in ms per run, then the median of the runs.
for mark in kernel_init agent_ready; do
    for f in "$out"/*.json; do
        awk -v want="$mark" '
            /"phases_ns":/ { done = 1 }
            !done && /"name":/ { gsub(/[",]/, "", $2); name = $2 }
            !done && /"ns":/ && name != "" { gsub(/,/, "", $2); ns[name] = $2; name = "" }
            END { if (want in ns && "launch" in ns) printf "%.1f\n", (ns[want] - ns["launch"]) / 1e6 }
        ' "$f"
    done | sort -n > "$out/$mark.ms"
done
median() {
    awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }' "$1"
}
echo "runs: $runs"
if m="$(median "$out/kernel_init.ms")"; then
    echo "launch -> kernel runs /init : median $m ms"
else
    echo "init was never reached"
fi
if m="$(median "$out/agent_ready.ms")"; then
    echo "launch -> agent ready       : median $m ms"
else
    echo "the agent was never reached"
fi
