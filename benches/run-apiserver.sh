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
# shellcheck source=benches/lib/control-plane.sh
source "$(dirname "$0")/lib/control-plane.sh"
"$BIN_DIR/capstan-bench" apiserver-pods --kubeconfig "$work/kubeconfig" "$@"
echo "apiserver CPU time (user+sys, s): $(cpu_seconds "$api_pid")"
rss_line apiserver "$api_pid"
rss_line store "$store_pid"
