#!/usr/bin/env bash
# bench_sandwich.sh: what libmigrate costs the application (docs/BENCHMARKS.md,
# "Cost to the application (sandwich server)").
#
#   bench/bench_sandwich.sh [--build DIR (/tmp/bs-build)] [--out DIR]
#                           [--users 50] [--rate 20] [--duration 30]
#                           [--image-bytes 20480] [--reps 3] [--seed-mib 64]
#                           [--movers 3] [--b-nice "0"] [--worker-nice "0"]
#                           [--precopy-rate "0"]
#                           [--state-root DIR]
#
# Builds (a release build in DIR, -Dtests=false) examples/sandwich_server,
# examples/sandwich_server_plain (the same source with -DSANDWICH_NO_MIGRATE:
# no libmigrate call, not linked with it — checked with ldd), tools/migratectl
# and bench/sandwich_load, then in one run:
#
#  (a) plain server against the server with the engine built in but idle
#      (no migration), the same load: USERS users sending RATE frames/s each
#      of IMAGE bytes for DURATION s (sandwich_load). REPS runs of each,
#      interleaved (plain, engine, engine, plain, plain, engine ...), each
#      with a fresh state folder. Per run: per-frame latency (p50/p99/max,
#      the first 2 s left out), the server's CPU over the load (utime+stime
#      and schedstat of every thread, main thread vs the engine's threads),
#      its CPU over 5 s idle before the load, VmRSS idle and VmHWM after,
#      and its RSS by mapping (/proc/PID/smaps).
#  (b) two engine servers A and B: MOVERS extra users are first given
#      SEED_MIB MiB of frames each on A (sandwich_load --rate 0), then the
#      same load as (a) plus the movers at RATE runs on A for DURATION+10 s,
#      and at 8 s, 18 s, 28 s ... one mover at a time is moved to B with
#      migratectl. The other users' frame latency inside each migration
#      window (A's STARTED → COMMITTED events) is compared with the same
#      length of window 2 s before it, and with every window of that length
#      away from the migrations (the noise). --b-nice "0 19 idle" runs (b) once
#      per value, the engine threads of A and B (every thread but the main
#      one) reniced by it (idle: chrt --idle, SCHED_IDLE): an experiment, does the interference come from
#      the engines competing for the CPU with the app's thread?
#      --worker-nice "0 -1" runs (b) once per value for each --b-nice value,
#      A and B started with sandwich_server --worker-nice N (the engine
#      option worker_nice: 0 = the library's default, 10; -1 = the engine's
#      threads at the app's priority, as the library ran before that option).
#      --precopy-rate "0 100000000" likewise, for each of those: A and B
#      started with sandwich_server --precopy-rate N (the engine option
#      precopy_rate_limit, bytes/s; 0 = no limit).
#  (c) idle after one migration: engine servers A and B, idle 5 s, then one
#      user with 20 frames on A moved to B, then 5 s idle again: VmRSS,
#      RssAnon, RssFile and RSS by mapping of both, before and after (the
#      migration has used the secret's HMAC, the workers, file digests).
#
# Then engine_footprint: an engine configured like the server's, RSS by
# stage (OpenSSL init, new, start, idle, users) and its threads' idle CPU.
#
# The servers' state folders go under --state-root (default OUT, on the
# disk; /dev/shm takes the disk out of the latency). The tables go to stdout
# and OUT/report.md; raw data stays in OUT (default a new
# /tmp/bench-sandwich.XXXXXX). About 5 minutes with the defaults, 6 with
# --b-nice "0 19"; every step has a time limit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRCDIR=$(dirname "$HERE")
BUILD=/tmp/bs-build
OUT=
USERS=50
RATE=20
DURATION=30
IMAGE=20480
REPS=3
SEED_MIB=64
MOVERS=3
BNICE=0
BWNICE=0
BRATE=0
WARMUP=2
STATE_ROOT=
while [ $# -gt 0 ]; do
	case "$1" in
	--build) BUILD=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	--users) USERS=$2; shift 2 ;;
	--rate) RATE=$2; shift 2 ;;
	--duration) DURATION=$2; shift 2 ;;
	--image-bytes) IMAGE=$2; shift 2 ;;
	--reps) REPS=$2; shift 2 ;;
	--seed-mib) SEED_MIB=$2; shift 2 ;;
	--movers) MOVERS=$2; shift 2 ;;
	--b-nice) BNICE=$2; shift 2 ;;
	--worker-nice) BWNICE=$2; shift 2 ;;
	--precopy-rate) BRATE=$2; shift 2 ;;
	--state-root) STATE_ROOT=$2; shift 2 ;;
	-h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {print}' "$0"; exit 0 ;;
	*) echo "unknown argument $1" >&2; exit 2 ;;
	esac
done
[ -n "$OUT" ] || OUT=$(mktemp -d /tmp/bench-sandwich.XXXXXX)
mkdir -p "$OUT"

if [ ! -f "$BUILD/build.ninja" ]; then
	meson setup "$BUILD" "$SRCDIR" --buildtype=release -Dtests=false >/dev/null
fi
ninja -C "$BUILD" examples/sandwich_server examples/sandwich_server_plain \
	tools/migratectl bench/sandwich_load bench/engine_footprint >/dev/null
ENGINE_BIN=$BUILD/examples/sandwich_server
PLAIN_BIN=$BUILD/examples/sandwich_server_plain
LOAD=$BUILD/bench/sandwich_load
CTL=$BUILD/tools/migratectl
REPORT="python3 $HERE/sandwich_report.py"

# The baseline must not contain the library at all; the other one must.
# (ldd's output is kept first: `ldd | grep -q` under pipefail fails when
# grep stops reading early.)
LDD_PLAIN=$(ldd "$PLAIN_BIN")
LDD_ENGINE=$(ldd "$ENGINE_BIN")
LDD_LOAD=$(ldd "$LOAD")
case "$LDD_PLAIN$LDD_LOAD" in
*libmigrate*) echo "bench_sandwich: $PLAIN_BIN or $LOAD links libmigrate" >&2; exit 1 ;;
esac
case "$LDD_ENGINE" in
*libmigrate*) ;;
*) echo "bench_sandwich: $ENGINE_BIN does not link libmigrate" >&2; exit 1 ;;
esac

PIDS=()
[ -n "$STATE_ROOT" ] || STATE_ROOT=$OUT
STATE_ROOT=$(mktemp -d "$STATE_ROOT/state.XXXXXX")
cleanup() {
	for p in "${PIDS[@]:-}"; do
		[ -n "$p" ] && kill "$p" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	rm -rf "$STATE_ROOT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$OUT/secret"
say() { printf '%s\n' "$*" | tee -a "$OUT/report.md"; }
: >"$OUT/report.md"

say "## bench_sandwich: $(date -u +%Y-%m-%dT%H:%MZ)"
say "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); state folders on $(df -T "$STATE_ROOT" | awk 'NR==2 {print $2}') ($STATE_ROOT)"
say "libmigrate $(git -C "$SRCDIR" describe --always --dirty 2>/dev/null || echo '?'), build $BUILD ($(sed -n 's/.*buildtype=\([a-z]*\).*/\1/p' "$BUILD/meson-logs/meson-log.txt" | head -1))"
say "load: $USERS users x $RATE frames/s x $IMAGE B for $DURATION s (warm-up ${WARMUP} s not counted); load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
say "ldd: $(basename "$PLAIN_BIN") links $(printf '%s\n' "$LDD_PLAIN" | awk '/=>/ {print $1}' | tr '\n' ' ')"
say "ldd: $(basename "$ENGINE_BIN") links $(printf '%s\n' "$LDD_ENGINE" | awk '/=>/ {print $1}' | wc -l) libraries, libmigrate among them"

# start_server KIND NAME DIR [WORKER_NICE]: sets SRV_PID, SRV_APP, SRV_URL.
start_server() {
	local bin=$ENGINE_BIN
	[ "$1" = plain ] && bin=$PLAIN_BIN
	mkdir -p "$3"
	"$bin" --id "$2" --secret-file "$OUT/secret" --state "$3" --worker-nice "${4:-0}" \
		--precopy-rate "${5:-0}" \
		>"$3.log" 2>"$3.err" &
	SRV_PID=$!
	PIDS+=("$SRV_PID")
	for _ in $(seq 200); do
		grep -q '^app ' "$3.log" 2>/dev/null && break
		sleep 0.05
	done
	SRV_APP=$(sed -n 's/^app //p' "$3.log")
	SRV_URL=$(sed -n 's/^url //p' "$3.log")
	[ -n "$SRV_APP" ] || { cat "$3.err" >&2; echo "bench_sandwich: $2 did not start" >&2; exit 1; }
}
stop_server() { # PID
	kill -TERM "$1" 2>/dev/null || true
	timeout 20 tail --pid="$1" -f /dev/null || kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# ------------------------------------------------------------------ (a)

say ""
say "(a) plain vs engine idle: $REPS runs each, interleaved"
seq_no=0
for rep in $(seq "$REPS"); do
	if [ $((rep % 2)) = 1 ]; then order="plain engine"; else order="engine plain"; fi
	for kind in $order; do
		seq_no=$((seq_no + 1))
		rd=$OUT/a-$(printf %02d $seq_no)
		mkdir -p "$rd"
		echo "$kind" >"$rd/kind"
		echo "$seq_no" >"$rd/seq"
		start_server "$kind" "S$seq_no" "$STATE_ROOT/s-a$seq_no"
		echo "$SRV_PID" >"$rd/pid"
		sleep 1
		$REPORT snap "$SRV_PID" >"$rd/snap_idle0.json"
		sleep 5
		$REPORT snap "$SRV_PID" >"$rd/snap_idle1.json"
		$REPORT smaps "$SRV_PID" >"$rd/smaps_idle.json"
		$REPORT snap "$SRV_PID" >"$rd/snap_load0.json"
		timeout $((DURATION + 60)) "$LOAD" --server "$SRV_APP" --users "$USERS" --rate "$RATE" \
			--duration "$DURATION" --warmup "$WARMUP" --image-bytes "$IMAGE" \
			>"$rd/load.json" 2>"$rd/load.err" || { cat "$rd/load.err" >&2; echo "bench_sandwich: load failed" >&2; exit 1; }
		$REPORT snap "$SRV_PID" >"$rd/snap_load1.json"
		$REPORT smaps "$SRV_PID" >"$rd/smaps_after.json"
		cp "$STATE_ROOT/s-a$seq_no.log" "$rd/server.log"
		du -sb "$STATE_ROOT/s-a$seq_no" | cut -f1 >"$rd/state_bytes"
		stop_server "$SRV_PID"
		rm -rf "$STATE_ROOT/s-a$seq_no"
		python3 - "$rd" <<-'EOF' | tee -a "$OUT/report.md"
			import json, sys
			d = sys.argv[1]
			g = json.load(open(d + "/load.json"))["groups"]["users"]
			print("  run %s %-6s frames %d  p50 %.0f us  p99 %.0f us  max %.0f us  errors %d" % (
			    open(d + "/seq").read().strip(), open(d + "/kind").read().strip(), g["frames"],
			    g["p50_us"], g["p99_us"], g["max_us"], g["errors"]))
		EOF
	done
done

# ------------------------------------------------------------------ (b)

movers=$(seq -f 'm-%g' 1 "$MOVERS" | paste -sd,)
# frames of IMAGE bytes (+ ~30 bytes of record header and newline) per SEED_MIB
seed_frames=$(( (SEED_MIB * 1048576 + IMAGE + 29) / (IMAGE + 30) ))
BDUR=$((DURATION + 10))
[ "$BDUR" -ge $((10 * MOVERS + 6)) ] || BDUR=$((10 * MOVERS + 6)) # the last migration at 8 + 10 (MOVERS - 1) s
brep=0
for combo in $(for n in $BNICE; do for w in $BWNICE; do for r in $BRATE; do echo "$n/$w/$r"; done; done; done); do
	nice=${combo%%/*}
	rest=${combo#*/}
	wn=${rest%%/*}
	rate=${rest#*/}
	brep=$((brep + 1))
	rd=$OUT/b-$(printf %02d "$brep")
	mkdir -p "$rd"
	echo "$brep" >"$rd/rep"
	echo "$nice" >"$rd/nice"
	echo "$wn" >"$rd/worker_nice"
	echo "$rate" >"$rd/precopy_rate"
	echo "$WARMUP" >"$rd/warmup"
	echo 2 >"$rd/gap"
	say ""
	say "(b) run $brep: $MOVERS users with ${SEED_MIB} MiB of frames each moved A -> B, one at a time, under the load; engine threads' nice $nice, worker_nice $wn, precopy_rate_limit $rate"
	start_server engine A "$STATE_ROOT/s-bA" "$wn" "$rate"
	PID_A=$SRV_PID; APP_A=$SRV_APP; URL_A=$SRV_URL
	start_server engine B "$STATE_ROOT/s-bB" "$wn" "$rate"
	PID_B=$SRV_PID; URL_B=$SRV_URL
	if [ "$nice" != 0 ]; then
		for p in $PID_A $PID_B; do
			for t in /proc/"$p"/task/*; do
				[ "${t##*/}" = "$p" ] && continue
				if [ "$nice" = idle ]; then
					chrt --idle -p 0 "${t##*/}" >/dev/null
				else
					renice -n "$nice" -p "${t##*/}" >/dev/null
				fi
			done
		done
	fi
	echo "$PID_A" >"$rd/pidA"
	echo "$PID_B" >"$rd/pidB"
	t_seed=$(date +%s.%N)
	timeout 120 "$LOAD" --server "$APP_A" --users 0 --extra "$movers" --rate 0 \
		--frames "$seed_frames" --duration 100 --warmup 0 --image-bytes "$IMAGE" \
		>"$rd/seed.json" 2>"$rd/seed.err" || { cat "$rd/seed.err" >&2; echo "bench_sandwich: seeding failed" >&2; exit 1; }
	for m in ${movers//,/ }; do
		echo "$m $(stat -c %s "$STATE_ROOT/s-bA/$m/frames.log")"
	done >"$rd/seeded.txt"
	say "  seeded $movers: $seed_frames frames each in $(awk -v a="$t_seed" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s ($(awk '{printf "%s%.1f MiB", (NR > 1 ? ", " : ""), $2 / 1048576}' "$rd/seeded.txt"))"
	sync # the seeded frames on disk, so the run starts from a clean page cache state
	$REPORT snap "$PID_A" >"$rd/snapA0.json"
	$REPORT snap "$PID_B" >"$rd/snapB0.json"
	timeout $((BDUR + 60)) "$LOAD" --server "$APP_A" --users "$USERS" --extra "$movers" --rate "$RATE" \
		--duration "$BDUR" --warmup "$WARMUP" --image-bytes "$IMAGE" --samples "$rd/samples.txt" \
		>"$rd/load.json" 2>"$rd/load.err" &
	LOAD_PID=$!
	PIDS+=("$LOAD_PID")
	t_load=$(date +%s.%N)
	: >"$rd/migrations.txt"
	k=0
	for m in ${movers//,/ }; do
		at=$((8 + 10 * k))
		k=$((k + 1))
		while awk -v a="$t_load" -v b="$(date +%s.%N)" -v at="$at" 'BEGIN {exit !(b - a < at)}'; do
			sleep 0.05
		done
		t0=$(date +%s.%N)
		rc=0
		"$CTL" --engine "$URL_A" --secret-file "$OUT/secret" --timeout 60 migrate "$m" --to "$URL_B" \
			>"$rd/migratectl-$m.out" 2>&1 || rc=$?
		t1=$(date +%s.%N)
		echo "$m $rc $t0 $t1 $(awk -v m="$m" '$1 == m {print $2}' "$rd/seeded.txt")" >>"$rd/migrations.txt"
		say "  migrate $m: migratectl rc=$rc in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s"
	done
	wait "$LOAD_PID" || { cat "$rd/load.err" >&2; echo "bench_sandwich: load failed" >&2; exit 1; }
	$REPORT snap "$PID_A" >"$rd/snapA1.json"
	$REPORT snap "$PID_B" >"$rd/snapB1.json"
	for m in ${movers//,/ }; do
		echo "$m A:$(stat -c %s "$STATE_ROOT/s-bA/$m/frames.log" 2>/dev/null || echo none) B:$(stat -c %s "$STATE_ROOT/s-bB/$m/frames.log" 2>/dev/null || echo none)"
	done >"$rd/after.txt"
	say "  frames.log after (bytes at A / at B): $(paste -sd' ' "$rd/after.txt")"
	stop_server "$PID_A"
	stop_server "$PID_B"
	cp "$STATE_ROOT/s-bA.log" "$rd/A.log"
	cp "$STATE_ROOT/s-bB.log" "$rd/B.log"
	rm -rf "$STATE_ROOT/s-bA" "$STATE_ROOT/s-bB"
done

# ------------------------------------------------------------------ (c)

say ""
say "(c) idle, then one user (20 frames) moved A -> B, then idle again"
rd=$OUT/c
mkdir -p "$rd"
start_server engine A "$STATE_ROOT/s-cA"
PID_A=$SRV_PID; APP_A=$SRV_APP; URL_A=$SRV_URL
start_server engine B "$STATE_ROOT/s-cB"
PID_B=$SRV_PID; URL_B=$SRV_URL
sleep 5
for s in A B; do
	p=$PID_A; [ "$s" = B ] && p=$PID_B
	$REPORT snap "$p" >"$rd/snap${s}0.json"
	$REPORT smaps "$p" >"$rd/smaps${s}0.json"
done
timeout 60 "$LOAD" --server "$APP_A" --users 0 --extra c-1 --rate 0 --frames 20 --duration 30 \
	--warmup 0 --image-bytes "$IMAGE" >"$rd/seed.json" 2>"$rd/seed.err" ||
	{ cat "$rd/seed.err" >&2; echo "bench_sandwich: (c) seeding failed" >&2; exit 1; }
"$CTL" --engine "$URL_A" --secret-file "$OUT/secret" --timeout 60 migrate c-1 --to "$URL_B" \
	>"$rd/migratectl.out" 2>&1 ||
	{ cat "$rd/migratectl.out" >&2; echo "bench_sandwich: (c) migration failed" >&2; exit 1; }
sleep 5
for s in A B; do
	p=$PID_A; [ "$s" = B ] && p=$PID_B
	$REPORT snap "$p" >"$rd/snap${s}1.json"
	$REPORT smaps "$p" >"$rd/smaps${s}1.json"
done
stop_server "$PID_A"
stop_server "$PID_B"
rm -rf "$STATE_ROOT/s-cA" "$STATE_ROOT/s-cB"
python3 - "$rd" <<-'EOF' | tee -a "$OUT/report.md"
	import json, sys
	d = sys.argv[1]
	j = lambda n: json.load(open("%s/%s.json" % (d, n)))
	print("| engine | | VmRSS kB | RssAnon kB | RssFile kB | libcrypto | libssl | [heap] | [anon] |")
	print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
	for s, role in (("A", "source"), ("B", "destination")):
	    for i, when in ((0, "idle, never migrated"), (1, "idle after one migration")):
	        sn, sm = j("snap%s%d" % (s, i)), j("smaps%s%d" % (s, i))
	        print("| %s (%s) | %s | %d | %d | %d | %d | %d | %d | %d |" % (
	            s, role, when, sn["VmRSS"], sn["RssAnon"], sn["RssFile"],
	            sm.get("libcrypto.so.3", 0), sm.get("libssl.so.3", 0), sm.get("[heap]", 0),
	            sm.get("[anon]", 0)))
	EOF

say ""
"$BUILD/bench/engine_footprint" --users "$USERS" --idle-s 5 >"$OUT/footprint.jsonl"

say ""
say "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
$REPORT report "$OUT" | tee -a "$OUT/report.md"
echo "raw data and report.md in $OUT"
