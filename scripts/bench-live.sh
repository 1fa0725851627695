#!/usr/bin/env bash
# Live mode's end-to-end benchmark beside its anchor, in one run, on loopback:
#
#   A) smtp-source -> private Postfix (relay, fsync'd queue) -> smtp-sink
#   B) smtp-source -> pmta-sim run --live (durable spool: sync-msg-create) -> smtp-sink
#
#   scripts/bench-live.sh [-n 20000] [-l 2048] [-s 50] [--reps 1] [--bin target/release/pmta-sim]
#   scripts/bench-live.sh --memory [-n 1000000] [-l 2048] [-s 50]
#
# --memory: no Postfix; N messages for a domain whose mail host refuses connections (a
# closed loopback port), so all stay queued; prints pmta-sim's resident memory (VmRSS and
# the peak, VmHWM) once the last is accepted.
#
# Each run injects N messages of L bytes over S parallel smtp-source sessions and is timed
# from the first connection until the sink has counted all N (end to end, as the lab's
# anchor measures Postfix). Prints one line per run and the ratio B/A of the medians.
# Ports 2700..2703 on 127.0.0.1; everything started is stopped on exit. Needs root (a
# private Postfix) and `scripts/lab.sh install`; build with `cargo build --release` first.
# The method follows the lab's bench.sh (smtp-source -> Postfix -> smtp-sink, end to end),
# which measured about 856 msg/s for 2 KB messages on the 2-core machine this was written on.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

N=20000; L=2048; S=50; REPS=1; BIN="$ROOT/target/release/pmta-sim"; MEMORY=0
while [ $# -gt 0 ]; do
    case "$1" in
        -n) N="$2"; shift 2 ;;
        -l) L="$2"; shift 2 ;;
        -s) S="$2"; shift 2 ;;
        --reps) REPS="$2"; shift 2 ;;
        --bin) BIN="$2"; shift 2 ;;
        --memory) MEMORY=1; shift ;;
        *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
done
[ "$N" -ge 1 ] && [ "$N" -le 1000000 ] || { echo "-n must be 1..1000000" >&2; exit 2; }
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release first" >&2; exit 2; }
SMTP_SOURCE=/usr/sbin/smtp-source
SMTP_SINK=/usr/sbin/smtp-sink
[ -x "$SMTP_SOURCE" ] && [ -x "$SMTP_SINK" ] || scripts/lab.sh install

WORK="$(mktemp -d /tmp/pmta-sim-bench.XXXXXX)"
# Postfix (user postfix) must reach its directories inside.
chmod 755 "$WORK"
P_PF_SINK=2700; P_PF=2701; P_LIVE_SINK=2702; P_LIVE=2703
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    scripts/lab.sh postfix-stop "$WORK/postfix" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# Messages the sink on PORT has counted (smtp-sink -c writes running counters).
count() { tr '\r' '\n' < "$WORK/sink-$1.out" | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2; }
start_sink() {
    "$SMTP_SINK" -c -u root "127.0.0.1:$1" 1000 > "$WORK/sink-$1.out" 2>&1 &
    PIDS+=($!)
    local i; for i in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
    echo "smtp-sink did not listen on $1" >&2; exit 1
}
wait_for() { # PORT COUNT -> seconds waited for the sink to reach COUNT (bounded: 600 s)
    local i; for i in $(seq 60000); do
        [ "$(count "$1")" -ge "$2" ] 2>/dev/null && return 0
        sleep 0.01
    done
    echo "sink on $1 stopped at $(count "$1") of $2" >&2; exit 1
}
# One run: inject N into PORT, wait until SINK counted N more. Prints msg/s.
run() {
    local port="$1" sink="$2" before start end
    before="$(count "$sink")"; before="${before:-0}"
    start="$(now)"
    "$SMTP_SOURCE" -M bench.lab.test -f s@bench.lab.test -t r@example.test \
        -m "$N" -s "$S" -l "$L" "127.0.0.1:$port" >/dev/null 2>&1
    wait_for "$sink" $((before + N))
    end="$(now)"
    echo "$N / ($end - $start)" | bc -l | xargs printf '%.0f'
}

if [ "$MEMORY" = 0 ]; then
    start_sink "$P_PF_SINK"
    start_sink "$P_LIVE_SINK"
    scripts/lab.sh postfix-start "$WORK/postfix" "$P_PF" --relay-to "127.0.0.1:$P_PF_SINK" >/dev/null
fi
# In --memory mode the route points at a port nothing listens on: every connection is
# refused and every message stays queued.

mkdir -p "$WORK/live"
cat > "$WORK/live/pmta.conf" <<EOF
host-name bench.pmta.test
smtp-listener 127.0.0.1:$P_LIVE
spool $WORK/live/spool
sync-msg-create yes
sync-msg-update yes
<acct-file $WORK/live/acct.csv>
    records d,b
</acct-file>
<source 127.0.0.1>
    always-allow-relaying yes
    default-virtual-mta bench
</source>
<virtual-mta bench>
    smtp-source-host 127.0.0.2 bench.pmta.test
</virtual-mta>
# connection-idle-timeout: Postfix's smtp client keeps a connection to a destination with a
# backlog open for the next message for up to 2 s (its defaults smtp_connection_cache_on_demand
# = yes, smtp_connection_cache_time_limit = 2s); PowerMTA's default 0 closes at once. The
# same 2 s here, so both sides reuse connections the same way.
<domain example.test>
    max-smtp-out 50
    max-msg-per-connection 1000
    connection-idle-timeout 2s
</domain>
EOF
"$BIN" run --live "$WORK/live/pmta.conf" --route "example.test=127.0.0.1:$P_LIVE_SINK" \
    2> "$WORK/live/stderr" &
LIVE_PID=$!
PIDS+=("$LIVE_PID")
for i in $(seq 200); do grep -q "listening on" "$WORK/live/stderr" && break; sleep 0.05; done

if [ "$MEMORY" = 1 ]; then
    echo "# bench-live --memory: n=$N size=${L}B sessions=$S $(date -u +%FT%TZ)"
    start="$(now)"
    "$SMTP_SOURCE" -M bench.lab.test -f s@bench.lab.test -t r@example.test \
        -m "$N" -s "$S" -l "$L" "127.0.0.1:$P_LIVE" >/dev/null 2>&1
    end="$(now)"
    echo "accepted $N in $(echo "$end - $start" | bc -l | xargs printf '%.1f') s ($(echo "$N / ($end - $start)" | bc -l | xargs printf '%.0f') msg/s into the spool)"
    sleep 5
    awk '/VmRSS|VmHWM/{printf "%s %d MiB\n", $1, $2 / 1024}' "/proc/$LIVE_PID/status"
    du -sh "$WORK/live/spool" | sed 's/^/spool on disk: /'
    kill -TERM "$LIVE_PID"; wait "$LIVE_PID" || true
    tail -1 "$WORK/live/stderr"
    exit 0
fi

echo "# bench-live: n=$N size=${L}B sessions=$S reps=$REPS cores=$(nproc) $(date -u +%FT%TZ)"
PF=(); LIVE=()
for r in $(seq "$REPS"); do
    a="$(run "$P_PF" "$P_PF_SINK")"; PF+=("$a")
    echo "postfix   run $r: $a msg/s end to end"
    b="$(run "$P_LIVE" "$P_LIVE_SINK")"; LIVE+=("$b")
    echo "pmta-sim  run $r: $b msg/s end to end"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }
mp="$(median "${PF[@]}")"; ml="$(median "${LIVE[@]}")"
echo "median: postfix $mp msg/s, pmta-sim live $ml msg/s, ratio $(echo "$ml / $mp" | bc -l | xargs printf '%.2f')x"
RSS_KB="$(awk '/VmHWM/{print $2}' "/proc/$LIVE_PID/status")"
echo "pmta-sim peak RSS: $((RSS_KB / 1024)) MiB"
kill -TERM "$LIVE_PID"; wait "$LIVE_PID" || true
tail -1 "$WORK/live/stderr"
