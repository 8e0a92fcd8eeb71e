#!/usr/bin/env bash
# Pod startup latency on one real node (issue #8's benchmark; upstream's SLO: p99 of
# create-to-running under 5 s with the image on the node): a `capstan server` with its
# agent on this machine's containerd (started here from scripts/setup's
# /etc/containerd/config.toml if none is running), then `capstan-bench pod-startup`.
# The pods are deleted at the end, and everything started here is stopped.
#
#   benches/run-pod-startup.sh [--pods 100] [--concurrency 10]
#
# Needs root and scripts/setup (containerd, runc, the CNI plugins, the busybox image
# archive). BIN_DIR picks the build (default target/release).
# shellcheck source=benches/lib/common.sh
source "$(dirname "$0")/lib/common.sh"
SOCKET=/run/containerd/containerd.sock
ARCHIVE=/var/lib/capstan/images/busybox.tar
[ -f "$ARCHIVE" ] || { echo "no $ARCHIVE: run scripts/setup" >&2; exit 1; }

if ! ctr --address "$SOCKET" version >/dev/null 2>&1; then
    containerd >"$work/containerd.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do ctr --address "$SOCKET" version >/dev/null 2>&1 && break; sleep 0.1; done
fi
# Containers (sandboxes included) of the benchmark's pods, by the pod-namespace label
# the kubelet gives them (the bench's default namespace).
containers() {
    ctr --address "$SOCKET" -n k8s.io containers ls -q 'labels."io.kubernetes.pod.namespace"==startup-bench' 2>/dev/null | wc -l
}
# The node's address: the host's default-route one, where the apiserver reaches the
# kubelet and the pods reach cluster DNS.
node_ip=$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") print $(i + 1)}')
"$BIN_DIR/capstan" server --data-dir "$work/data" --node-name startup-node \
    --https-listen-port "$(port)" --store-client-port "$(port)" --store-peer-port "$(port)" \
    --write-kubeconfig "$work/kubeconfig" --container-runtime-endpoint "unix://$SOCKET" \
    --image-archive "$ARCHIVE" --pod-logs-dir "$work/pods" ${node_ip:+--node-ip "$node_ip"} \
    --log-level warn 2>"$work/server.log" &
server_pid=$!
pids+=("$server_pid")
ready=0
for _ in $(seq 600); do
    if [ -f "$work/kubeconfig" ] &&
        kubectl --kubeconfig "$work/kubeconfig" get nodes --no-headers 2>/dev/null | grep -q " Ready"; then
        ready=1
        break
    fi
    sleep 0.1
done
if [ "$ready" != 1 ]; then
    echo "the node did not become Ready in 60 s; server log:" >&2
    cat "$work/server.log" >&2
    exit 1
fi
"$BIN_DIR/capstan-bench" pod-startup --kubeconfig "$work/kubeconfig" --namespace startup-bench "$@"
# The pods are gone from the API; the agent removes their containers and sandboxes on
# its next relist. Stop only after that, so none outlives the run (a leftover from an
# interrupted run is removed here too: the agent removes what no pod owns).
for _ in $(seq 600); do
    [ "$(containers)" -eq 0 ] && break
    sleep 0.2
done
left=$(containers)
[ "$left" -eq 0 ] || echo "warning: $left containers of the benchmark's pods are still there" >&2
echo "server CPU time (user+sys, s): $(cpu_seconds "$server_pid")"
rss_line server "$server_pid"
