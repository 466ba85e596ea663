#!/usr/bin/env bash
# On a host with hardware KVM (VT-x/AMD-V), boots the distro kernel (or
# --kernel PATH) to the isolab agent a few times and prints boot-to-init
# and boot-to-ready medians. On a PVM host it stops early and says why.
#
#   cargo build --release
#   sudo scripts/linux-boot-times.sh [--kernel PATH] [--runs N]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
isolab="$repo/target/release/isolab"
runs=5
kernel=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --kernel) kernel=(--kernel "$2"); shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        *) echo "usage: $0 [--kernel PATH] [--runs N]" >&2; exit 2 ;;
    esac
done
[[ -x "$isolab" ]] || { echo "build first: cargo build --release" >&2; exit 1; }
if [[ -d /sys/module/kvm_pvm ]]; then
    echo "this host's KVM is PVM: a stock kernel cannot boot to init here; use a host with hardware KVM" >&2
    exit 1
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for i in $(seq "$runs"); do
    "$isolab" run --backend microvm --guest linux --scenario startup --json "${kernel[@]}" > "$out/$i.json"
done
python3 - "$out" <<'PY'
import json, os, statistics, sys
d = sys.argv[1]
init, ready = [], []
for f in sorted(os.listdir(d)):
    r = json.load(open(os.path.join(d, f)))
    m = {x["name"]: x["ns"] for x in r["marks"]}
    if "kernel_init" in m: init.append((m["kernel_init"] - m["launch"]) / 1e6)
    if "agent_ready" in m: ready.append((m["agent_ready"] - m["launch"]) / 1e6)
print(f"runs: {len(os.listdir(d))}")
print(f"launch -> kernel runs /init : median {statistics.median(init):.1f} ms" if init else "init was never reached")
print(f"launch -> agent ready       : median {statistics.median(ready):.1f} ms" if ready else "the agent was never reached")
PY
