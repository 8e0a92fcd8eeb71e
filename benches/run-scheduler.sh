#!/usr/bin/env bash
# Scheduler scale run: a capstan store, a capstan apiserver and a capstan scheduler on
# loopback, then `capstan-bench scheduler-throughput` against them. Everything it
# starts is stopped on exit.
#
#   benches/run-scheduler.sh [--nodes 5000] [--pods 50000] [--concurrency 64]
#
# BIN_DIR picks the build (default target/release; target/debug works, slower).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-target/release}
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client=$(port); peer=$(port); api=$(port); sched=$(port)

"$BIN_DIR/capstan" store --data-dir "$work/store" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "default=http://127.0.0.1:$peer" --log-level warn 2>"$work/store.log" &
pids+=($!)
"$BIN_DIR/capstan" apiserver --etcd-servers "http://127.0.0.1:$client" --bind-address 127.0.0.1 \
    --secure-port "$api" --cert-dir "$work/pki" --kubeconfig-out "$work/kubeconfig" \
    --log-level warn 2>"$work/apiserver.log" &
pids+=($!)
for _ in $(seq 200); do
    [ -f "$work/kubeconfig" ] && kubectl --kubeconfig "$work/kubeconfig" get --raw /healthz >/dev/null 2>&1 && break
    sleep 0.1
done
"$BIN_DIR/capstan" scheduler --kubeconfig "$work/kubeconfig" --bind-address 127.0.0.1 --secure-port "$sched" --log-level warn 2>"$work/scheduler.log" &
pids+=($!)
sched_pid=$!
"$BIN_DIR/capstan-bench" scheduler-throughput --kubeconfig "$work/kubeconfig" "$@"
echo "scheduler CPU time (user+sys, s): $(awk '{print ($14+$15)/100}' /proc/$sched_pid/stat)"
echo "scheduler peak RSS (KiB): $(awk '/VmHWM/ {print $2}' /proc/$sched_pid/status)"
