#!/usr/bin/env bash
# Side-by-side benchmark: runs the same capstan-bench workloads, in one run, against the
# reference etcd and against `capstan store`, each on free loopback ports in its own
# temp dir on disk (so fsync is real) with the same durability (both fsync every commit
# before acknowledging it), and prints a markdown table: throughput and p99 with
# capstan/etcd ratios, plus each server's RSS after the workloads.
#
#   benches/run-vs-etcd.sh            # print the table
#   benches/run-vs-etcd.sh --write    # ... and put it into BENCHMARKS.md between markers
#   benches/run-vs-etcd.sh --quick    # 1/10th the requests, for trying the script out
#   benches/run-vs-etcd.sh --members 3   # three-member clusters of each
#   benches/run-vs-etcd.sh --failover    # three members each: leader SIGKILL under write
#                                        # load, the write gap and acknowledged writes lost
#   benches/run-vs-etcd.sh --watch-fanout  # only: 10,000 watchers of one prefix, event latency
#   benches/run-vs-etcd.sh --memory-1m     # only: put 1,000,000 distinct keys (256 B values),
#                                          # then each server's RSS
#   benches/run-vs-etcd.sh --rounds 5      # each server five times, alternating; every
#                                          # figure is the median of the rounds, and a
#                                          # second table gives each round's ratios
#
# Servers are started one after the other, never side by side, so they do not compete
# for this machine's cores; the load generator runs on the same machine as the server.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WRITE=0
MEMBERS=1
FAILOVER=0
WATCH_FANOUT=0
MEMORY_1M=0
SCALE=1
BUILD=1
ROUNDS=1
while (($#)); do
    case "$1" in
        --write) WRITE=1 ;;
        --quick) SCALE=10 ;;
        --no-build) BUILD=0 ;;
        --failover)
            FAILOVER=1
            MEMBERS=3
            ;;
        --watch-fanout) WATCH_FANOUT=1 ;;
        --memory-1m) MEMORY_1M=1 ;;
        --members)
            MEMBERS=${2:?--members needs a number}
            shift
            ;;
        --rounds)
            ROUNDS=${2:?--rounds needs a number}
            [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds needs a positive number" >&2; exit 2; }
            shift
            ;;
        -h | --help)
            sed -n '2,22p' "$0"
            exit 0
            ;;
        *)
            echo "unknown argument: $1" >&2
            exit 2
            ;;
    esac
    shift
done

log() { echo "run-vs-etcd: $*" >&2; }


# --- the workloads --------------------------------------------------------------------
# One line each: "label|capstan-bench arguments". Every workload runs with the same
# arguments against both servers; $ENDPOINTS is added per server. Totals are sized so
# the whole script stays within a few minutes on a 2-core machine.
PUT_TOTAL=$((50000 / SCALE))
READ_TOTAL=$((100000 / SCALE))
TXN_TOTAL=$((30000 / SCALE))
KEEPALIVE_TOTAL=$((100000 / SCALE))
WATCH_PUTS=$((500 / SCALE))
KEYS="--key-size 32 --key-prefix /bench/ --key-space-size 10000"
LOAD="--clients 100 --conns 10"
WORKLOADS=(
    "put 256 B values, 100 clients / 10 conns|put $LOAD $KEYS --val-size 256 --total $PUT_TOTAL"
    "range 1 key, linearizable|range --consistency l $LOAD $KEYS --total $READ_TOTAL"
    "range 1 key, serializable|range --consistency s $LOAD $KEYS --total $READ_TOTAL"
    "txn-put 1 put/txn, 256 B|txn-put --txn-ops 1 $LOAD $KEYS --val-size 256 --total $TXN_TOTAL"
    "watch-latency 1000 watchers / 100 streams, 100 puts/s (events/s)|watch-latency --watchers 1000 --streams 100 --conns 10 --put-rate 100 --val-size 256 --total $WATCH_PUTS"
    "lease keepalive, 100 clients / 10 conns|lease-keepalive $LOAD --total $KEEPALIVE_TOTAL"
)
# Failover replaces the workloads: it kills a member, so nothing may run after it.
if ((FAILOVER)); then WORKLOADS=(); fi
# The fan-out and memory runs replace them too, each its own table (and markers).
# Fan-out: ten times the watchers of the watch-latency row, ten per stream as there, at
# a tenth of the put rate, so the offered events/s are the same 100,000.
FANOUT_PUTS=$((100 / SCALE))
if ((WATCH_FANOUT)); then
    FANOUT="watch-latency --watchers 10000 --streams 1000 --conns 10 --put-rate 10 --val-size 256 --total $FANOUT_PUTS"
    WORKLOADS=(
        "watch fan-out 10000 watchers / 1000 streams, 10 puts/s (events/s)|$FANOUT"
        "the same with prev_kv, each put replacing a record (events/s)|$FANOUT --prev-kv"
    )
fi
# Memory: 1,000,000 distinct keys (sequential, so every put creates one); the RSS row
# of the table is the point, the put row comes for free.
MEM_KEYS=$((1000000 / SCALE))
if ((MEMORY_1M)); then
    WORKLOADS=("put $MEM_KEYS distinct 32 B keys, 256 B values, 100 clients / 10 conns|put $LOAD --key-size 32 --key-prefix /mem/ --key-space-size $MEM_KEYS --sequential-keys --val-size 256 --total $MEM_KEYS")
fi

# --- set-up ---------------------------------------------------------------------------
if ((BUILD)); then
    # Installs etcd-server (the reference) and etcdctl on a fresh machine; a no-op when
    # they are there.
    "$ROOT/scripts/setup"
    log "building release binaries"
    (cd "$ROOT" && cargo build --release --bin capstan && cargo build --release -p capstan-bench --bin capstan-bench) >&2
fi
CAPSTAN="$ROOT/target/release/capstan"
BENCH="$ROOT/target/release/capstan-bench"
ETCD=$(command -v etcd || echo /usr/bin/etcd)
for bin in "$CAPSTAN" "$BENCH" "$ETCD"; do
    [[ -x "$bin" ]] || { echo "missing $bin" >&2; exit 1; }
done

# /var/tmp, not /tmp: /tmp may be a tmpfs, where fsync costs nothing and a durability
# comparison means nothing.
WORK=$(mktemp -d /var/tmp/capstan-vs-etcd.XXXXXX)
SERVER_PIDS=()
cleanup() {
    local pid
    for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${SERVER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

USED_PORTS=" "
# Below the kernel's ephemeral range: a port there may be the local end of some
# outgoing connection, which refuses connections (so looks free) yet cannot be bound.
EPHEMERAL_LOW=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
PORT_LOW=$((EPHEMERAL_LOW / 2 < 10000 ? EPHEMERAL_LOW / 2 : 10000))
# A free loopback port: nothing accepts a connection on it and this run has not handed
# it out already. Bash's /dev/tcp keeps the script free of extra tools.
free_port() {
    local p
    while :; do
        p=$((PORT_LOW + RANDOM % (EPHEMERAL_LOW - PORT_LOW)))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            echo "$p"
            return
        fi
    done
}

# start_members KIND: starts $MEMBERS members of KIND (etcd or capstan), sets ENDPOINTS
# (comma-separated client URLs) and MEMBER_PIDS, and waits until every member answers.
# Both kinds take etcd's flags, so one loop serves both and cluster mode is the same
# loop with MEMBERS > 1.
start_members() {
    local kind=$1 i cluster="" peers=() clients=()
    for ((i = 0; i < MEMBERS; i++)); do
        peers[i]="http://127.0.0.1:$(free_port)"
        clients[i]="http://127.0.0.1:$(free_port)"
        cluster+="${cluster:+,}m$i=${peers[i]}"
    done
    ENDPOINTS=$(IFS=,; echo "${clients[*]}")
    MEMBER_PIDS=()
    for ((i = 0; i < MEMBERS; i++)); do
        local dir="$WORK/$kind/r$ROUND/m$i" cmd
        mkdir -p "$dir"
        if [[ "$kind" == etcd ]]; then cmd=("$ETCD"); else cmd=("$CAPSTAN" store); fi
        "${cmd[@]}" --name "m$i" --data-dir "$dir/data" \
            --listen-client-urls "${clients[i]}" --advertise-client-urls "${clients[i]}" \
            --listen-peer-urls "${peers[i]}" --initial-advertise-peer-urls "${peers[i]}" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            >"$dir/server.log" 2>&1 </dev/null &
        MEMBER_PIDS+=($!)
        SERVER_PIDS+=($!)
    done
    local ep deadline=$((SECONDS + 60))
    for ep in "${clients[@]}"; do
        until ETCDCTL_API=3 etcdctl --endpoints="$ep" --command-timeout=2s get bench-ready >/dev/null 2>&1; do
            if ((SECONDS > deadline)); then
                echo "$kind at $ep not ready in 60 s; log:" >&2
                cat "$WORK/$kind/r$ROUND"/m*/server.log >&2
                exit 1
            fi
            sleep 0.2
        done
    done
}

stop_members() {
    local pid
    for pid in "${MEMBER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${MEMBER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}

# mem_kib FIELD: FIELD (VmRSS or VmHWM) of /proc/<pid>/status summed over the members.
mem_kib() {
    local pid total=0 v
    for pid in "${MEMBER_PIDS[@]}"; do
        v=$(awk -v f="$1:" '$1 == f { print $2 }' "/proc/$pid/status")
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# cpu_ticks: user+system CPU time of the members so far, in clock ticks (summed). CPU
# per operation is the figure a loaded machine disturbs least: other processes take
# wall-clock time from a server, not the work each request costs it.
cpu_ticks() {
    local pid total=0 v
    for pid in "${MEMBER_PIDS[@]}"; do
        v=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
        total=$((total + v))
    done
    echo "$total"
}

# run_suite KIND: every workload against KIND, in round $ROUND; JSON lines to
# $WORK/KIND.ROUND.jsonl, CPU ticks to .cpu, memory to .rss and .hwm, the failover
# report to .failover.
run_suite() {
    local kind=$1 w label args out="$WORK/$1.$ROUND"
    start_members "$kind"
    log "$kind: $MEMBERS member(s) at $ENDPOINTS (round $ROUND of $ROUNDS)"
    : >"$out.jsonl"
    : >"$out.cpu"
    for w in "${WORKLOADS[@]}"; do
        label=${w%%|*}
        args=${w#*|}
        log "$kind: $label"
        # A workload that fails still prints its JSON report (exit 2 means nothing
        # succeeded, e.g. an unimplemented service), so the table can say why.
        local before
        before=$(cpu_ticks)
        # shellcheck disable=SC2086 # $args is a word list by design
        "$BENCH" $args --endpoints "$ENDPOINTS" --json --label "$label" >>"$out.jsonl" ||
            log "$kind: $label failed (exit $?)"
        echo "$label|$(($(cpu_ticks) - before))" >>"$out.cpu"
        tail -n 1 "$out.jsonl" >&2
    done
    mem_kib VmRSS >"$out.rss"
    mem_kib VmHWM >"$out.hwm"
    if ((FAILOVER)); then
        log "$kind: failover (leader SIGKILL after 3 s of writes)"
        "$BENCH" failover --endpoints "$ENDPOINTS" --pids "$(IFS=,; echo "${MEMBER_PIDS[*]}")" \
            --clients-per-member 10 --kill-after 3 --duration 10 --json --label "$kind" \
            >"$out.failover" || log "$kind: failover run failed (exit $?)"
        cat "$out.failover" >&2
    fi
    stop_members
}

# failover_table: the two servers' failover reports as a markdown table.
failover_table() {
    python3 - "$WORK/etcd.failover" "$WORK/capstan.failover" <<'PY'
import json, sys
rows = []
for path in sys.argv[1:]:
    try:
        rows.append(json.loads(open(path).read().strip().splitlines()[-1]))
    except (OSError, ValueError, IndexError):
        rows.append(None)
e, c = rows
print("| leader SIGKILL under write load | etcd | capstan | capstan/etcd |")
print("|---|--:|--:|--:|")
for key, name in [("gap_ms", "write gap, ms"), ("longest_silence_ms", "longest silence, ms"),
                  ("acknowledged", "writes acknowledged"), ("lost", "acknowledged writes lost")]:
    ev = e[key] if e else None
    cv = c[key] if c else None
    ratio = f"{cv / ev:.2f}" if ev and cv is not None and key.endswith("_ms") else ""
    fmt = lambda v: "n/a" if v is None else (f"{v:.0f}" if isinstance(v, float) else str(v))
    print(f"| {name} | {fmt(ev)} | {fmt(cv)} | {ratio} |")
PY
}

# cpu_table: server CPU per operation (summed over the members) for each workload, from
# the ticks run_suite recorded and the operations each JSON report counts.
cpu_table() {
    python3 - "$WORK" "$(getconf CLK_TCK)" <<'PY'
import json, sys
work, hz = sys.argv[1], int(sys.argv[2])
def load(kind):
    ops = {}
    for line in open(f"{work}/{kind}.jsonl"):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        ops[r.get("label")] = r.get("ok", 0)
    out = {}
    for line in open(f"{work}/{kind}.cpu"):
        label, ticks = line.rstrip("\n").rsplit("|", 1)
        n = ops.get(label, 0)
        out[label] = float(ticks) / hz * 1e6 / n if n else None
    return out
e, c = load("etcd"), load("capstan")
print("| server CPU per operation, all members (µs) | etcd | capstan | capstan/etcd |")
print("|---|--:|--:|--:|")
for label in e:
    ev, cv = e.get(label), c.get(label)
    fmt = lambda v: "n/a" if v is None else f"{v:.0f}"
    ratio = f"{cv / ev:.2f}" if ev and cv else ""
    print(f"| {label} | {fmt(ev)} | {fmt(cv)} | {ratio} |")
PY
}

# Rounds alternate the servers, so a change in the machine's load over the run falls on
# both alike.
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    run_suite etcd
    run_suite capstan
done

# median_of_rounds: each server's per-round files folded into $WORK/KIND.jsonl, .cpu,
# .rss, .hwm and .failover, each figure the median over the rounds (the mean of the two
# middle ones for an even count), which the tables below read as one run's. Acknowledged writes
# lost are summed instead: a loss in any round must show.
median_of_rounds() {
    python3 - "$WORK" "$ROUNDS" <<'PY'
import json, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def med(vals):
    vals = sorted(v for v in vals if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    m = vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
    # Counts stay integers (the table tool reads them as such).
    return round(m) if all(isinstance(v, int) for v in vals) else m
def lines(path):
    try:
        out = []
        for l in open(path):
            try:
                out.append(json.loads(l))
            except ValueError:
                pass
        return out
    except OSError:
        return []
for kind in ("etcd", "capstan"):
    runs = [lines(f"{work}/{kind}.{r}.jsonl") for r in range(1, rounds + 1)]
    with open(f"{work}/{kind}.jsonl", "w") as f:
        for row in runs[0]:
            same = [next((x for x in rr if x.get("label") == row.get("label")), None) for rr in runs]
            same = [x for x in same if x]
            out = dict(row)
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[k] = med([x.get(k) for x in same])
            f.write(json.dumps(out) + "\n")
    cpu = {}
    for r in range(1, rounds + 1):
        for l in open(f"{work}/{kind}.{r}.cpu"):
            label, ticks = l.rstrip("\n").rsplit("|", 1)
            cpu.setdefault(label, []).append(int(ticks))
    with open(f"{work}/{kind}.cpu", "w") as f:
        for label, t in cpu.items():
            f.write(f"{label}|{med(t)}\n")
    for ext in ("rss", "hwm"):
        vals = [int(open(f"{work}/{kind}.{r}.{ext}").read().strip() or 0) for r in range(1, rounds + 1)]
        open(f"{work}/{kind}.{ext}", "w").write(f"{med(vals)}\n")
    fo = [lines(f"{work}/{kind}.{r}.failover") for r in range(1, rounds + 1)]
    fo = [x[-1] for x in fo if x]
    if fo:
        out = dict(fo[0])
        for k, v in fo[0].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = sum(x.get(k, 0) for x in fo) if k == "lost" else med([x.get(k) for x in fo])
        open(f"{work}/{kind}.failover", "w").write(json.dumps(out) + "\n")
PY
}

# rounds_table: each round's capstan/etcd ratios per workload, throughput and p99 (the
# spread the medians hide), or the failover gap ratio.
rounds_table() {
    python3 - "$WORK" "$ROUNDS" "$FAILOVER" <<'PY'
import json, sys
work, rounds, failover = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
def last(path):
    try:
        return [json.loads(l) for l in open(path) if l.strip()]
    except (OSError, ValueError):
        return []
head = "| capstan/etcd per round | " + " | ".join(f"{r}" for r in range(1, rounds + 1)) + " |"
print(head)
print("|---|" + "--:|" * rounds)
if failover:
    cells = []
    for r in range(1, rounds + 1):
        e, c = last(f"{work}/etcd.{r}.failover"), last(f"{work}/capstan.{r}.failover")
        ok = e and c and e[-1].get("gap_ms") and c[-1].get("gap_ms") is not None
        cells.append(f"{c[-1]['gap_ms'] / e[-1]['gap_ms']:.2f}" if ok else "n/a")
    print("| write gap | " + " | ".join(cells) + " |")
else:
    per = [(last(f"{work}/etcd.{r}.jsonl"), last(f"{work}/capstan.{r}.jsonl")) for r in range(1, rounds + 1)]
    for row in per[0][0]:
        label = row.get("label")
        for key, name in (("throughput", "throughput"), ("p99_ms", "p99")):
            cells = []
            for e, c in per:
                ev = next((x.get(key) for x in e if x.get("label") == label), None)
                cv = next((x.get(key) for x in c if x.get("label") == label), None)
                cells.append(f"{cv / ev:.2f}" if ev and cv is not None else "n/a")
            print(f"| {label}, {name} | " + " | ".join(cells) + " |")
PY
}

median_of_rounds

if ((FAILOVER)); then
    TABLE=$(failover_table)
    if ((ROUNDS > 1)); then TABLE+="

$(rounds_table)"; fi
else
TABLE=$("$BENCH" compare \
    --baseline-name etcd --baseline "$WORK/etcd.jsonl" \
    --baseline-rss-kib "$(cat "$WORK/etcd.rss")" --baseline-peak-kib "$(cat "$WORK/etcd.hwm")" \
    --candidate-name capstan --candidate "$WORK/capstan.jsonl" \
    --candidate-rss-kib "$(cat "$WORK/capstan.rss")" --candidate-peak-kib "$(cat "$WORK/capstan.hwm")")
    TABLE+="

$(cpu_table)"
    if ((ROUNDS > 1)); then TABLE+="

$(rounds_table)"; fi
fi

CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]]; then COMMIT+=" (with uncommitted changes)"; fi
ETCD_VERSION=$("$ETCD" --version 2>/dev/null | awk '/etcd Version/ { print $3 }')
# The load average says whether something else was competing for the cores.
LOAD_AVG=$(cut -d' ' -f1-3 /proc/loadavg)
ROUNDS_NOTE=""
if ((ROUNDS > 1)); then ROUNDS_NOTE=" Each figure is the median of $ROUNDS rounds (the servers alternating)."; fi
REPORT="Run $(date -u +%Y-%m-%dT%H:%MZ) at commit $COMMIT on $(nproc) cores ($CPU), $MEMBERS member(s) each, etcd ${ETCD_VERSION:-?}; load average at the end: $LOAD_AVG.$ROUNDS_NOTE

$TABLE"

echo "$REPORT"

if ((WRITE)); then
    DOC="$ROOT/BENCHMARKS.md"
    MARK=run-vs-etcd
    if ((FAILOVER)); then
        MARK=failover
    elif ((WATCH_FANOUT)); then
        MARK=watch-fanout
    elif ((MEMORY_1M)); then
        MARK=memory-1m
    elif ((MEMBERS > 1)); then
        MARK=run-vs-etcd-cluster
    fi
    BEGIN="<!-- $MARK:begin -->"
    END="<!-- $MARK:end -->"
    if ! grep -qF "$BEGIN" "$DOC" 2>/dev/null || ! grep -qF "$END" "$DOC"; then
        echo "$DOC has no $BEGIN / $END markers; not written" >&2
        exit 1
    fi
    printf '%s\n' "$REPORT" >"$WORK/report.md"
    awk -v b="$BEGIN" -v e="$END" -v f="$WORK/report.md" '
        $0 == b { print; while ((getline l < f) > 0) print l; skip = 1; next }
        $0 == e { skip = 0 }
        !skip { print }
    ' "$DOC" >"$WORK/doc.md"
    cat "$WORK/doc.md" >"$DOC"
    log "table written to $DOC"
fi
