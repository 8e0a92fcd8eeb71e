#!/usr/bin/env bash
# Scheduler scale run: a capstan store, a capstan apiserver and a capstan scheduler on
# loopback, then `capstan-bench scheduler-throughput` against them. Everything it
# starts is stopped on exit.
#
#   benches/run-scheduler.sh [--nodes 5000] [--pods 50000] [--concurrency 64]
#
# BIN_DIR picks the build (default target/release; target/debug works, slower).
# shellcheck source=benches/lib/control-plane.sh
source "$(dirname "$0")/lib/control-plane.sh"
sched=$(port)
"$BIN_DIR/capstan" scheduler --kubeconfig "$work/kubeconfig" --bind-address 127.0.0.1 --secure-port "$sched" --log-level warn 2>"$work/scheduler.log" &
pids+=($!)
sched_pid=$!
"$BIN_DIR/capstan-bench" scheduler-throughput --kubeconfig "$work/kubeconfig" "$@"
echo "scheduler CPU time (user+sys, s): $(cpu_seconds "$sched_pid")"
rss_line scheduler "$sched_pid"
