# Sourced by the benchmark scripts: runs from the repo root, makes a temp dir and stops
# what the script started on exit. Sets: BIN_DIR (default target/release), work (the
# temp dir), pids (append every background process started). Defines: port,
# cpu_seconds, rss_line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BIN_DIR=${BIN_DIR:-target/release}
work=$(mktemp -d)
pids=()
# Newest first, each waited for before the next: a process goes before what it
# depends on (an apiserver before its store, a node agent before containerd).
cleanup() {
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# cpu_seconds PID: user+system CPU time so far.
cpu_seconds() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
# rss_line NAME PID: "NAME RSS now / peak (MiB): X / Y".
rss_line() {
    echo "$1 RSS now / peak (MiB): $(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$2/status") / $(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$2/status")"
}
