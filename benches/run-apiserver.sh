#!/usr/bin/env bash
# The apiserver with many pods: a capstan store and a capstan apiserver on loopback (no
# scheduler, no nodes: the pods name a node themselves), then `capstan-bench
# apiserver-pods` against them, then each process's memory. Everything it starts is
# stopped on exit.
#
#   benches/run-apiserver.sh [--pods 100000] [--concurrency 64]
#
# BIN_DIR picks the build (default target/release). With CAPSTAN_BENCH_STORE=etcd the
# apiserver runs on the reference etcd instead (Debian's etcd-server).
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
client=$(port); peer=$(port); api=$(port)

if [ "${CAPSTAN_BENCH_STORE:-capstan}" = etcd ]; then
    store=(etcd); what=etcd
else
    store=("$BIN_DIR/capstan" store --log-level warn); what="capstan store"
fi
"${store[@]}" --data-dir "$work/store" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "default=http://127.0.0.1:$peer" 2>"$work/store.log" &
pids+=($!)
store_pid=$!
"$BIN_DIR/capstan" apiserver --etcd-servers "http://127.0.0.1:$client" --bind-address 127.0.0.1 \
    --secure-port "$api" --cert-dir "$work/pki" --kubeconfig-out "$work/kubeconfig" \
    --log-level warn 2>"$work/apiserver.log" &
pids+=($!)
api_pid=$!
for _ in $(seq 200); do
    [ -f "$work/kubeconfig" ] && kubectl --kubeconfig "$work/kubeconfig" get --raw /healthz >/dev/null 2>&1 && break
    sleep 0.1
done
echo "store: $what"
"$BIN_DIR/capstan-bench" apiserver-pods --kubeconfig "$work/kubeconfig" "$@"
echo "apiserver CPU time (user+sys, s): $(awk '{print ($14+$15)/100}' /proc/$api_pid/stat)"
echo "apiserver RSS now / peak (MiB): $(awk '/VmRSS/ {printf "%.0f", $2/1024}' /proc/$api_pid/status) / $(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$api_pid/status)"
echo "store RSS now / peak (MiB): $(awk '/VmRSS/ {printf "%.0f", $2/1024}' /proc/$store_pid/status) / $(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$store_pid/status)"
