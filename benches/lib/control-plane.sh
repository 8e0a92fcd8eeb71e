# Sourced by the apiserver and scheduler benchmark scripts: starts a store (capstan, or
# the reference etcd with CAPSTAN_BENCH_STORE=etcd) and a capstan apiserver on free
# loopback ports in a temp dir, waits until the apiserver answers, and stops everything
# on exit. Sets: BIN_DIR, work (the temp dir; its kubeconfig is $work/kubeconfig),
# pids, store_pid, api_pid, store_what, and what common.sh defines.
# shellcheck source=benches/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

client=$(port); peer=$(port); api=$(port)
if [ "${CAPSTAN_BENCH_STORE:-capstan}" = etcd ]; then
    store=(etcd); store_what=etcd
else
    store=("$BIN_DIR/capstan" store --log-level warn); store_what="capstan store"
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
ready=0
for _ in $(seq 300); do
    if [ -f "$work/kubeconfig" ] && kubectl --kubeconfig "$work/kubeconfig" get --raw /healthz >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.1
done
if [ "$ready" != 1 ]; then
    echo "the apiserver did not answer in 30 s; logs:" >&2
    cat "$work/store.log" "$work/apiserver.log" >&2
    exit 1
fi
echo "store: $store_what"
