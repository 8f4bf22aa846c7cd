#!/usr/bin/env bash
# bench_files.sh: the file-state benchmark (docs/BENCHMARKS.md, "File state").
#
#   sudo bench/bench_files.sh [--build DIR] [--reps N (5)] [--log FILE]
#                             [--no-link] [--no-profile]   (skip C / the perf runs)
#                             [--only A|B|C|AB|C1|AC1|...] (just those sections;
#                                C followed by a digit: just that part of C)
#                             [--tbf-burst SIZE|auto (32kbit)]  (tbf bucket in C;
#                                auto: rate/HZ as tc-tbf(8) asks, >= 1514 bytes)
#
# Builds bench_files (a release build in DIR, default /tmp/bench-files-build)
# and runs, on the same generated files and changes, in one run:
#   A  loopback, 64 MiB in 8 files of 8 MiB whose destination holds the copy
#      from before 64 runs of 10 KiB were changed (1 %): libmigrate against
#      `rsync -a -I --no-whole-file --stats` between two local folders;
#      bytes on the wire and wall time, N repetitions each, alternating
#      (libmigrate with pre-copy on, the default, and off); then one more
#      libmigrate run of A and of B under perf for where the time goes.
#   B  loopback, the same 64 MiB to a destination holding nothing: libmigrate
#      (pre-copy on, and off) against a raw TCP copy of the same files
#      (bench_files tcp-send/tcp-recv), without and with fsync at the end.
#   C  two network namespaces joined by a veth shaped with tc tbf to
#      100 Mbit/s each way (addresses 192.0.2.1 / 192.0.2.2, TEST-NET-1,
#      only inside the namespaces this script makes and deletes):
#      C1 the fresh 64 MiB (random) with libmigrate and the raw TCP copy, 3 runs;
#      C2 64 MiB of half-compressible frames while the app writes (frames
#         appended at 1 MiB/s into 1 MiB segment files, and 64 random 4 KiB
#         pages/s rewritten in a 1 MiB state file), fresh destination:
#         pre-copy off / alpha 50 ms / alpha 1.5 s, zstd off / on; and one
#         run at alpha 50 ms with 256 pages/s rewritten;
#      C3 pre-copy at alpha 50 ms with the same writer, folders of 16, 64
#         and 256 MiB, 3 runs each: downtime against folder size.
# C needs root and `ip netns`; without them it is skipped with the reason.
# Every step has a time limit; the whole run takes about 4 minutes.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRCDIR=$(dirname "$HERE")
BUILD=/tmp/bench-files-build
REPS=5
LOG=/tmp/bench_files-results.txt
NOLINK=
NOPROFILE=
CASES=ABC
BURST=32kbit
while [ $# -gt 0 ]; do
	case "$1" in
	--build) BUILD=$2; shift 2 ;;
	--reps) REPS=$2; shift 2 ;;
	--log) LOG=$2; shift 2 ;;
	--no-link) NOLINK=1; shift ;;
	--no-profile) NOPROFILE=1; shift ;;
	--only) CASES=$2; shift 2 ;;
	--tbf-burst) BURST=$2; shift 2 ;;
	-h|--help) sed -n '2,34p' "$0"; exit 0 ;;
	*) echo "unknown argument $1" >&2; exit 2 ;;
	esac
done

if [ ! -f "$BUILD/build.ninja" ]; then
	meson setup "$BUILD" "$SRCDIR" --buildtype=release -Dtests=false -Dwerror=false >/dev/null
fi
ninja -C "$BUILD" bench/bench_files >/dev/null
BIN=$BUILD/bench/bench_files

W=$(mktemp -d /tmp/bench-files.XXXXXX)
NSA=bfA$$
NSB=bfB$$
PIDS=()
NETNS=0
cleanup() {
	for p in "${PIDS[@]:-}"; do
		[ -n "$p" ] && kill "$p" 2>/dev/null || true
	done
	if [ "$NETNS" = 1 ]; then
		ip netns del "$NSA" 2>/dev/null || true
		ip netns del "$NSB" 2>/dev/null || true
	fi
	rm -rf "$W"
}
# has X: section X was asked for (--only)
has() { case "$CASES" in *"$1"*) return 0 ;; esac; return 1; }
# hasc N: part N of C was asked for (--only C, or --only CN)
hasc() {
	has C || return 1
	case "$CASES" in *C[0-9]*) has "C$1" ;; *) return 0 ;; esac
}
trap cleanup EXIT
trap 'exit 130' INT TERM

: >"$LOG"
say() { printf '%s\n' "$*"; }
log() { printf '%s\n' "$*" >>"$LOG"; }
# kv "LINE" KEY: the value of KEY=... in a result line.
kv() { printf ' %s\n' "$1" | sed -n "s/.* $2=\([^ ]*\).*/\1/p"; }
now_us() { echo $(($(date +%s%N) / 1000)); }
# median of the arguments
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
min() { printf '%s\n' "$@" | sort -g | head -1; }
calc() { awk "BEGIN {printf \"$1\", $2}"; }

say "## bench_files: $(date -u +%Y-%m-%dT%H:%MZ)"
say "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
say "filesystem of $W: $(df -T "$W" | awk 'NR==2 {print $2}'); rsync: $(rsync --version | head -1 | sed 's/  */ /g')"
say "libmigrate $(git -C "$SRCDIR" describe --always --dirty 2>/dev/null || echo '?'), build $BUILD ($(sed -n 's/.*buildtype=\([a-z]*\).*/\1/p' "$BUILD/meson-logs/meson-log.txt" | head -1))"
say "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine shows as noise: rsync and libmigrate alternate, medians of $REPS)"
log "machine nproc=$(nproc) kernel=$(uname -r) loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------------ engines

RUN=0
# start_dst ROOT NS ADDR PORT: starts a destination engine; sets DST_URL, DST_PID, DST_OUT.
start_dst() {
	local root=$1 ns=$2 addr=$3 port=$4
	RUN=$((RUN + 1))
	DST_OUT=$W/dst.$RUN.out
	local pre=()
	[ -n "$ns" ] && pre=(ip netns exec "$ns")
	"${pre[@]}" "$BIN" engine --root "$root" --id B --listen "$addr" --port "$port" \
		--timeout-s 200 >"$DST_OUT" 2>"$W/dst.$RUN.err" &
	DST_PID=$!
	PIDS+=("$DST_PID")
	DST_URL=
	for _ in $(seq 100); do
		DST_URL=$(awk '/^url / {print $2}' "$DST_OUT" 2>/dev/null)
		[ -n "$DST_URL" ] && break
		sleep 0.05
	done
	[ -n "$DST_URL" ] || { cat "$W/dst.$RUN.err" >&2; echo "destination engine did not start" >&2; exit 1; }
}
stop_dst() {
	kill -TERM "$DST_PID" 2>/dev/null || true
	wait "$DST_PID" 2>/dev/null || true
	DEST=$(grep '^dest ' "$DST_OUT" || true)
}

# migrate NAME SRC_DIR SEED_DIR NS_A ADDR_A NS_B ADDR_B [source options...]
# Fresh roots; the source serves a copy of SRC_DIR as user u1; the destination
# holds SEED_DIR in its departed-user cache ("" for nothing). Sets RES (the
# source's result line + verified=), DEST. Checks that the destination ends
# with exactly the source's files at the pause.
migrate() {
	local name=$1 src=$2 seed=$3 nsa=$4 addra=$5 nsb=$6 addrb=$7
	shift 7
	local ra=$W/roots/$name.A rb=$W/roots/$name.B
	rm -rf "$ra" "$rb"
	mkdir -p "$ra" "$rb/.mig-cache"
	cp -a "$src" "$ra/u1"
	[ -n "$seed" ] && cp -a "$seed" "$rb/.mig-cache/u1"
	sync
	local port=0
	[ -n "$nsb" ] && port=7100
	start_dst "$rb" "$nsb" "$addrb" "$port"
	local pre=()
	[ -n "$nsa" ] && pre=(ip netns exec "$nsa")
	RES=$(timeout 150 "${pre[@]}" "$BIN" engine --root "$ra" --id A --listen "$addra" \
		--port "$port" --user u1 --to "$DST_URL" --timeout-s 140 "$@" 2>"$W/src.$RUN.err" |
		grep '^result ' || true)
	stop_dst
	[ -n "$RES" ] || { cat "$W/src.$RUN.err" >&2; echo "$name: no result" >&2; exit 1; }
	# The source's folder went to its cache at release: what it held at the pause.
	local ok=no
	[ "$(kv "$RES" state)" = committed ] && diff -r -q "$ra/.mig-cache/u1" "$rb/u1" >/dev/null && ok=yes
	RES="$RES verified=$ok"
	log "$name $RES"
	log "$name $DEST"
	rm -rf "$ra" "$rb"
}

# ------------------------------------------------------------------ data

D=$W/data
mkdir -p "$D" "$W/roots"
"$BIN" gen "$D/old" --files 8 --file-size 8M --seed 7 --kind random
cp -a "$D/old" "$D/new"
"$BIN" change "$D/new" --files 8 --file-size 8M --runs 64 --run-bytes 10K
MB64=$((64 * 1024 * 1024))

# ------------------------------------------------------------------ A: delta vs rsync

if has A; then
say ""
say "### A. Loopback: 64 MiB (8 x 8 MiB, random), destination holds the copy before 1 % changed (64 runs of 10 KiB)"
say ""
say "| run | rsync bytes | libmigrate bytes | bytes ratio | rsync time (ms) | libmigrate time (ms) | time ratio | libmigrate: to pause / pause→PREPARED / →COMMITTED (ms) | CPU s: rsync / lm source + dest | libmigrate, pre-copy off (ms) |"
say "|---|---:|---:|---:|---:|---:|---:|---|---|---:|"
A_RB=(); A_LB=(); A_RT=(); A_LT=(); A_R=(); A_OFF=()
for rep in $(seq "$REPS"); do
	rm -rf "$W/rs.src" "$W/rs.dst"
	cp -a "$D/new" "$W/rs.src"
	cp -a "$D/old" "$W/rs.dst"
	sync
	t0=$(now_us)
	out=$(/usr/bin/time -f 'cpu %U %S' rsync -a -I --no-whole-file --stats "$W/rs.src/" "$W/rs.dst/" 2>&1)
	t1=$(now_us)
	rs_time=$((t1 - t0))
	rs_sent=$(printf '%s\n' "$out" | sed -n 's/^Total bytes sent: //p' | tr -d ,)
	rs_recv=$(printf '%s\n' "$out" | sed -n 's/^Total bytes received: //p' | tr -d ,)
	rs_cpu=$(printf '%s\n' "$out" | awk '/^cpu / {printf "%.2f", $2 + $3}')
	diff -r -q "$W/rs.src" "$W/rs.dst" >/dev/null || { echo "rsync copies differ" >&2; exit 1; }
	rs_bytes=$((rs_sent + rs_recv))
	log "A.rsync rep=$rep sent=$rs_sent received=$rs_recv time_us=$rs_time cpu=$rs_cpu"

	migrate "A.$rep" "$D/new" "$D/old" "" 127.0.0.1 "" 127.0.0.1
	lm_bytes=$(($(kv "$RES" bytes_sent) + $(kv "$RES" bytes_received)))
	lm_time=$(kv "$RES" duration_us)
	[ "$(kv "$RES" verified)" = yes ] || { echo "A: destination differs" >&2; exit 1; }
	tp=$(kv "$RES" t_pause); tpr=$(kv "$RES" t_prepared); tc_=$(kv "$RES" t_committed)
	lm_cpu=$(calc '%.2f + %.2f' "($(kv "$RES" cpu_user_us) + $(kv "$RES" cpu_sys_us)) / 1e6, ($(kv "$DEST" cpu_user_us) + $(kv "$DEST" cpu_sys_us)) / 1e6")
	migrate "A.off.$rep" "$D/new" "$D/old" "" 127.0.0.1 "" 127.0.0.1 --max-rounds 1
	[ "$(kv "$RES" verified)" = yes ] || { echo "A: destination differs" >&2; exit 1; }
	off=$(kv "$RES" duration_us)
	say "| $rep | $rs_bytes | $lm_bytes | $(calc '%.3f' "$lm_bytes / $rs_bytes") | $(calc '%.0f' "$rs_time / 1000") | $(calc '%.0f' "$lm_time / 1000") | $(calc '%.2f' "$lm_time / $rs_time") | $(calc '%.0f / %.1f / %.0f' "$tp / 1000, ($tpr - $tp) / 1000, ($tc_ - $tpr) / 1000") | $rs_cpu / $lm_cpu | $(calc '%.0f' "$off / 1000") |"
	A_RB+=("$rs_bytes"); A_LB+=("$lm_bytes"); A_RT+=("$rs_time"); A_LT+=("$lm_time")
	A_R+=("$(calc '%.3f' "$lm_time / $rs_time")"); A_OFF+=("$off")
done
mrb=$(median "${A_RB[@]}"); mlb=$(median "${A_LB[@]}"); mrt=$(median "${A_RT[@]}"); mlt=$(median "${A_LT[@]}")
mr=$(median "${A_R[@]}")
say "| median | $mrb | $mlb | $(calc '%.3f' "$mlb / $mrb") | $(calc '%.0f' "$mrt / 1000") | $(calc '%.0f' "$mlt / 1000") | $mr | | | $(calc '%.0f' "$(median "${A_OFF[@]}") / 1000") |"
say "| best | | | | $(calc '%.0f' "$(min "${A_RT[@]}") / 1000") | $(calc '%.0f' "$(min "${A_LT[@]}") / 1000") | $(calc '%.2f' "$(min "${A_LT[@]}") / $(min "${A_RT[@]}")") | | | $(calc '%.0f' "$(min "${A_OFF[@]}") / 1000") |"
say ""
say "Time: libmigrate from mig_migrate() to COMMITTED at the source (the destination has installed, fsynced and activated); rsync: its wall time. Time ratio: median of the per-run ratios (the runs alternate). Targets: bytes <= rsync's: $(awk -v a="$mlb" -v b="$mrb" 'BEGIN {print (a <= b) ? "met" : "MISSED"}'); time <= rsync's: $(awk -v a="$mr" 'BEGIN {print (a <= 1) ? "met" : "MISSED"}') ($mr x)."
fi

# ------------------------------------------------------------------ where the time goes

# profile NAME SEED_DIR: one more loopback migration of $D/new with both
# engines under perf (DWARF call graphs, so every time is inflated by the
# profiler); prints the share of each engine's samples spent in (below) the
# library's stages, and when each stage ran (first and last sample).
PERF_STAGES="signatures_task round_task mig__delta_generate mig__delta_signature mig__sha256_file chunk_task mig__patch_feed verify_task install_task lws_write mig__wire_encode mig__wire_decode"
profile() {
	local name=$1 seed=$2
	shift 2
	local pd=$W/perf.$name
	mkdir -p "$pd"
	local ra=$W/roots/prof.A rb=$W/roots/prof.B
	rm -rf "$ra" "$rb"
	mkdir -p "$ra" "$rb/.mig-cache"
	cp -a "$D/new" "$ra/u1"
	[ -n "$seed" ] && cp -a "$seed" "$rb/.mig-cache/u1"
	sync
	RUN=$((RUN + 1))
	local out=$W/dst.$RUN.out
	perf record -q -F 999 --call-graph dwarf,16384 -o "$pd/dst.data" -- \
		"$BIN" engine --root "$rb" --id B --timeout-s 100 >"$out" 2>/dev/null &
	local dp=$!
	PIDS+=("$dp")
	local url=
	for _ in $(seq 200); do
		url=$(awk '/^url / {print $2}' "$out" 2>/dev/null)
		[ -n "$url" ] && break
		sleep 0.05
	done
	local res
	res=$(timeout 100 perf record -q -F 999 --call-graph dwarf,16384 -o "$pd/src.data" -- \
		"$BIN" engine --root "$ra" --id A --user u1 --to "$url" --timeout-s 90 "$@" 2>/dev/null | grep '^result ')
	kill -INT "$dp" 2>/dev/null || true
	wait "$dp" 2>/dev/null || true
	log "profile.$name $res"
	say ""
	say "Profile of one more run ($name, both engines under \`perf record -F 999 --call-graph dwarf\`; $(calc '%.0f' "$(kv "$res" duration_us) / 1000") ms under the profiler): share of each engine's samples in and below a stage, and when the stage ran (first to last sample, ms after the source process's first sample)."
	say ""
	say "| stage | engine | share of samples | ran from – to (ms) |"
	say "|---|---|---:|---|"
	local t0
	t0=$(perf script -i "$pd/src.data" -F time 2>/dev/null | head -1 | tr -d ' :') || true
	for e in dst src; do
		perf report -i "$pd/$e.data" --children --sort symbol -g none --stdio 2>/dev/null >"$pd/$e.txt" || true
		perf script -i "$pd/$e.data" -F time,ip,sym 2>/dev/null | awk -v stages="$PERF_STAGES" -v t0="$t0" '
			BEGIN { n = split(stages, st, " ") }
			/^ *[0-9]+\.[0-9]+:/ { t = $1; sub(":", "", t); next }
			{ for (i = 1; i <= n; i++) if (index($0, st[i])) { if (!(st[i] in a)) a[st[i]] = t; b[st[i]] = t } }
			END { for (k in a) printf "%s %.0f %.0f\n", k, (a[k] - t0) * 1000, (b[k] - t0) * 1000 }' >"$pd/$e.times"
		for stage in $PERF_STAGES; do
			local pct span
			pct=$(awk -v s="$stage" '$3 == "[.]" && $4 == s {print $1; exit}' "$pd/$e.txt")
			span=$(awk -v s="$stage" '$1 == s {printf "%s – %s", $2, $3}' "$pd/$e.times")
			if [ -n "$pct" ]; then
				say "| \`$stage\` | $([ $e = src ] && echo source || echo destination) | $pct | $span |"
			fi
		done
	done
	rm -rf "$ra" "$rb" "$pd"
}
if ! has A; then
	:
elif [ -z "$NOPROFILE" ] && command -v perf >/dev/null && perf record -q -o "$W/perf.test" -- true 2>/dev/null; then
	profile delta "$D/old"
else
	say ""
	say "(perf unavailable: no profile)"
fi

# ------------------------------------------------------------------ B: fresh vs raw TCP

# tcp_copy NAME SRC_DIR NS_A NS_B ADDR_B [--fsync]: sets TCP_US
tcp_copy() {
	local name=$1 src=$2 nsa=$3 nsb=$4 addrb=$5
	shift 5
	local out=$W/tcp.out pa=() pb=()
	[ -n "$nsa" ] && pa=(ip netns exec "$nsa")
	[ -n "$nsb" ] && pb=(ip netns exec "$nsb")
	rm -rf "$W/tcp.dst" "$out"
	sync
	"${pb[@]}" "$BIN" tcp-recv --listen "$addrb" --port 0 --out "$W/tcp.dst" "$@" >"$out" &
	local rp=$!
	PIDS+=("$rp")
	local port=
	for _ in $(seq 100); do
		port=$(awk '/^port / {print $2}' "$out" 2>/dev/null)
		[ -n "$port" ] && break
		sleep 0.05
	done
	local line
	line=$(timeout 120 "${pa[@]}" "$BIN" tcp-send --to "$addrb:$port" "$src")
	wait "$rp" 2>/dev/null || true
	diff -r -q "$src" "$W/tcp.dst" >/dev/null || { echo "tcp copy differs" >&2; exit 1; }
	TCP_US=$(kv "$line" time_us)
	log "$name $line"
	rm -rf "$W/tcp.dst"
}
mbps() { calc '%.1f' "$1 / $2"; } # bytes, microseconds -> MB/s

if has B; then
say ""
say "### B. Loopback: the same 64 MiB to a destination holding nothing"
say ""
say "| run | raw TCP copy (MB/s) | raw TCP copy + fsync (MB/s) | libmigrate, pre-copy on (MB/s) | libmigrate, pre-copy off (MB/s) | on / raw TCP | off / raw TCP | on / TCP+fsync | CPU s, pre-copy on: source + dest |"
say "|---|---:|---:|---:|---:|---:|---:|---:|---|"
B_T=(); B_TF=(); B_ON=(); B_OFF=(); B_R=()
for rep in $(seq "$REPS"); do
	tcp_copy "B.tcp.$rep" "$D/new" "" "" 127.0.0.1
	t=$TCP_US
	tcp_copy "B.tcpfsync.$rep" "$D/new" "" "" 127.0.0.1 --fsync
	tf=$TCP_US
	migrate "B.on.$rep" "$D/new" "" "" 127.0.0.1 "" 127.0.0.1
	[ "$(kv "$RES" verified)" = yes ] || { echo "B: destination differs" >&2; exit 1; }
	on=$(kv "$RES" duration_us)
	on_cpu=$(calc '%.2f + %.2f' "($(kv "$RES" cpu_user_us) + $(kv "$RES" cpu_sys_us)) / 1e6, ($(kv "$DEST" cpu_user_us) + $(kv "$DEST" cpu_sys_us)) / 1e6")
	migrate "B.off.$rep" "$D/new" "" "" 127.0.0.1 "" 127.0.0.1 --max-rounds 1
	[ "$(kv "$RES" verified)" = yes ] || { echo "B: destination differs" >&2; exit 1; }
	off=$(kv "$RES" duration_us)
	say "| $rep | $(mbps $MB64 "$t") | $(mbps $MB64 "$tf") | $(mbps $MB64 "$on") | $(mbps $MB64 "$off") | $(calc '%.2f' "$t / $on") | $(calc '%.2f' "$t / $off") | $(calc '%.2f' "$tf / $on") | $on_cpu |"
	B_T+=("$t"); B_TF+=("$tf"); B_ON+=("$on"); B_OFF+=("$off"); B_R+=("$(calc '%.3f' "$t / $on")")
done
t=$(median "${B_T[@]}"); tf=$(median "${B_TF[@]}"); on=$(median "${B_ON[@]}"); off=$(median "${B_OFF[@]}")
br=$(median "${B_R[@]}")
say "| median | $(mbps $MB64 "$t") | $(mbps $MB64 "$tf") | $(mbps $MB64 "$on") | $(mbps $MB64 "$off") | $br | $(calc '%.2f' "$t / $off") | $(calc '%.2f' "$tf / $on") |"
t=$(min "${B_T[@]}"); tf=$(min "${B_TF[@]}"); on=$(min "${B_ON[@]}"); off=$(min "${B_OFF[@]}")
say "| best | $(mbps $MB64 "$t") | $(mbps $MB64 "$tf") | $(mbps $MB64 "$on") | $(mbps $MB64 "$off") | $(calc '%.2f' "$t / $on") | $(calc '%.2f' "$t / $off") | $(calc '%.2f' "$tf / $on") |"
if [ -z "$NOPROFILE" ] && command -v perf >/dev/null && perf record -q -o "$W/perf.test" -- true 2>/dev/null; then
	profile fresh ""
fi
say ""
say "MB/s: 64 MiB of files over the time to COMMITTED (libmigrate) or to the receiver's acknowledgement (TCP); ratios in the median row are medians of the per-run ratios. Target: fresh transfer >= 0.5 x raw TCP copy on loopback: $(awk -v a="$br" 'BEGIN {print (a >= 0.5) ? "met" : "MISSED"}') ($br x with pre-copy on)."
fi

# ------------------------------------------------------------------ C: shaped link

say ""
say "### C. Two network namespaces, veth shaped with tc tbf to 100 Mbit/s"
skip=
if [ -n "$NOLINK" ]; then
	skip="--no-link"
elif ! has C; then
	skip="--only $CASES"
elif [ "$(id -u)" != 0 ]; then
	skip="not root"
elif ! ip netns add "$NSA" 2>"$W/netns.err"; then
	skip="ip netns add failed: $(cat "$W/netns.err")"
else
	NETNS=1
	ip netns add "$NSB"
	ip link add bfa$$ netns "$NSA" type veth peer name bfb$$ netns "$NSB"
	ip -n "$NSA" addr add 192.0.2.1/24 dev bfa$$
	ip -n "$NSB" addr add 192.0.2.2/24 dev bfb$$
	for ns in "$NSA" "$NSB"; do ip -n "$ns" link set lo up; done
	ip -n "$NSA" link set bfa$$ up
	ip -n "$NSB" link set bfb$$ up
	if [ "$BURST" = auto ]; then
		# tc-tbf(8): the minimum bucket is the rate divided by HZ; at least one full frame.
		HZ=$(sed -n 's/^CONFIG_HZ=//p' "/boot/config-$(uname -r)" 2>/dev/null || true)
		HZ_FROM=/boot/config-$(uname -r)
		if [ -z "$HZ" ] && [ -r /proc/config.gz ]; then
			HZ=$(zcat /proc/config.gz | sed -n 's/^CONFIG_HZ=//p'); HZ_FROM=/proc/config.gz
		fi
		[ -n "$HZ" ] || { HZ=1000; HZ_FROM="unknown, assumed"; }
		BURST=$(( (12500000 + HZ - 1) / HZ )) # 100 Mbit/s in bytes per jiffy
		[ "$BURST" -ge 1514 ] || BURST=1514
		BURST=${BURST}b
		log "tbf burst $BURST from HZ=$HZ ($HZ_FROM)"
	fi
	tc -n "$NSA" qdisc add dev bfa$$ root tbf rate 100mbit burst "$BURST" latency 50ms
	tc -n "$NSB" qdisc add dev bfb$$ root tbf rate 100mbit burst "$BURST" latency 50ms
fi
if [ -n "$skip" ]; then
	say ""
	say "Skipped: $skip."
	say ""
	say "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg). Raw result lines: $LOG"
	exit 0
fi
LINK=12500000 # 100 Mbit/s in bytes per second
say ""
say "\`tc qdisc add dev VETH root tbf rate 100mbit burst $BURST latency 50ms\` on both ends${HZ:+ (burst = rate/HZ, HZ=$HZ from $HZ_FROM)}, MTU 1500; 192.0.2.1 ($NSA) -> 192.0.2.2 ($NSB)."
# tbf_stats: "sent/dropped/overlimits" of both ends' tbf so far
tbf_stats() {
	local ns dev
	for ns in "$NSA:bfa$$" "$NSB:bfb$$"; do
		dev=${ns#*:}
		tc -s -n "${ns%%:*}" qdisc show dev "$dev" | awk -v d="$dev" '/^ Sent/ {gsub(/[,)]/, ""); printf "%s sent=%s pkts=%s dropped=%s overlimits=%s requeues=%s; ", d, $2, $4, $7, $9, $11}'
	done
}
say ""
if hasc 1; then
say "#### C1. Fresh transfer of the 64 MiB (random) over the link"
say ""
say "| run | raw TCP copy (s) | libmigrate (s) | raw TCP, Mbit/s of files | libmigrate, Mbit/s of files | libmigrate / 100 Mbit/s | libmigrate / raw TCP | libmigrate downtime (ms) |"
say "|---|---:|---:|---:|---:|---:|---:|---:|"
C1_T=(); C1_L=(); C1_R=()
for rep in 1 2 3; do
	tcp_copy "C1.tcp.$rep" "$D/new" "$NSA" "$NSB" 192.0.2.2
	migrate "C1.lm.$rep" "$D/new" "" "$NSA" 192.0.2.1 "$NSB" 192.0.2.2
	[ "$(kv "$RES" verified)" = yes ] || { echo "C1: destination differs" >&2; exit 1; }
	lm=$(kv "$RES" duration_us)
	say "| $rep | $(calc '%.2f' "$TCP_US / 1e6") | $(calc '%.2f' "$lm / 1e6") | $(calc '%.1f' "$MB64 * 8 / $TCP_US") | $(calc '%.1f' "$MB64 * 8 / $lm") | $(calc '%.3f' "$MB64 * 1e6 / $lm / $LINK") | $(calc '%.3f' "$TCP_US / $lm") | $(calc '%.0f' "$(kv "$RES" downtime_us) / 1000") |"
	C1_T+=("$TCP_US"); C1_L+=("$lm"); C1_R+=("$(calc '%.4f' "$TCP_US / $lm")")
	log "C1.tbf.$rep $(tbf_stats)"
done
t=$(median "${C1_T[@]}"); lm=$(median "${C1_L[@]}"); best=$(min "${C1_L[@]}")
say "| median | $(calc '%.2f' "$t / 1e6") | $(calc '%.2f' "$lm / 1e6") | $(calc '%.1f' "$MB64 * 8 / $t") | $(calc '%.1f' "$MB64 * 8 / $lm") | $(calc '%.3f' "$MB64 * 1e6 / $lm / $LINK") | $(median "${C1_R[@]}") | |"
say "| best | | $(calc '%.2f' "$best / 1e6") | | $(calc '%.1f' "$MB64 * 8 / $best") | $(calc '%.3f' "$MB64 * 1e6 / $best / $LINK") | | |"
say ""
say "libmigrate: pre-copy on, zstd auto (the data is random: not compressed), $(kv "$RES" bytes_sent) bytes sent for 67108864 bytes of files; time to COMMITTED. Target >= 0.95 x link rate (median): $(awk -v a="$MB64" -v t="$lm" -v l="$LINK" 'BEGIN {print (a * 1e6 / t / l >= 0.95) ? "met" : "MISSED"}'). (TCP/IP and Ethernet headers cap any TCP transfer at MTU 1500 at 1448/1514 = 0.956 of the link.)"
say ""
say "tbf counters after C1 (cumulative over its runs): $(tbf_stats)"
fi

WRITER=(--append-rate 1M --modify-rate 256K --warmup-ms 1000 --kind mixed)
hasc 2 && "$BIN" gen "$D/mixed64" --files 8 --file-size 8M --seed 11 --kind mixed

# row NAME: one table row from RES
row() {
	local rb ok
	rb=$(kv "$RES" round_bytes | awk -F, '{for (i = 1; i <= NF; i++) printf "%s%.1f", (i > 1 ? " + " : ""), $i / 1048576}')
	ok=$(kv "$RES" verified)
	[ "$(kv "$RES" state)" = committed ] || ok="ABORTED $(kv "$RES" err): $(kv "$RES" reason | tr _ ' ')"
	say "| $1 | $(kv "$RES" rounds) | $rb | $(calc '%.1f' "$(kv "$RES" bytes_sent) / 1048576") | $(calc '%.2f' "$(kv "$RES" duration_us) / 1e6") | $(calc '%.0f' "$(kv "$RES" downtime_us) / 1000") | $(calc '%.1f' "$(kv "$RES" appended) / 1048576") + $(calc '%.1f' "$(kv "$RES" modified) / 1048576") | $ok |"
}

if hasc 2; then
say ""
say "#### C2. 64 MiB of half-compressible frames, the app writing, fresh destination"
say ""
say "| pre-copy, zstd | rounds | MiB per round (last: paused) | MiB sent | total (s) | downtime (ms) | MiB appended + rewritten while migrating | same files |"
say "|---|---:|---|---:|---:|---:|---|---|"
for pc in off 50 1500; do
	for z in off on; do
		args=(--compression "$z")
		if [ "$pc" = off ]; then args+=(--max-rounds 1); label="off"; else args+=(--alpha "$pc"); label="α = $pc ms"; fi
		migrate "C2.$pc.$z" "$D/mixed64" "" "$NSA" 192.0.2.1 "$NSB" 192.0.2.2 "${args[@]}" "${WRITER[@]}"
		row "$label, zstd $z"
	done
done
# Four times the in-place rewriting: files written to while a pre-copy
# round reads them, in most rounds.
migrate "C2.heavy" "$D/mixed64" "" "$NSA" 192.0.2.1 "$NSB" 192.0.2.2 --alpha 50 --compression off \
	--append-rate 1M --modify-rate 1M --warmup-ms 1000 --kind mixed
row "α = 50 ms, zstd off, rewriting 1 MiB/s"
fi

if hasc 3; then
say ""
say "#### C3. Downtime against folder size: pre-copy α = 50 ms, zstd off, the same writer, 3 runs per size"
say ""
say "| folder | downtime (ms), median | downtime of each run (ms) | final round of each run (MiB) | rounds | total (s), median | same files |"
say "|---|---:|---|---|---|---:|---|"
for files in 2 8 32; do
	"$BIN" gen "$D/size$files" --files "$files" --file-size 8M --seed 13 --kind mixed
	dts=(); finals=(); rounds=(); totals=(); oks=()
	for rep in 1 2 3; do
		migrate "C3.$files.$rep" "$D/size$files" "" "$NSA" 192.0.2.1 "$NSB" 192.0.2.2 --alpha 50 --compression off "${WRITER[@]}"
		if [ "$(kv "$RES" state)" = committed ]; then
			dts+=("$(calc '%.0f' "$(kv "$RES" downtime_us) / 1000")")
			oks+=("$(kv "$RES" verified)")
		else
			oks+=("ABORTED $(kv "$RES" err): $(kv "$RES" reason | tr _ ' ')")
		fi
		finals+=("$(kv "$RES" round_bytes | awk -F, '{printf "%.1f", $NF / 1048576}')")
		rounds+=("$(kv "$RES" rounds)")
		totals+=("$(kv "$RES" duration_us)")
	done
	say "| $((files * 8)) MiB | $(median "${dts[@]:-0}") | $(IFS=,; echo "${dts[*]:-}" | sed 's/,/, /g') | $(IFS=,; echo "${finals[*]}" | sed 's/,/, /g') | $(IFS=,; echo "${rounds[*]}" | sed 's/,/, /g') | $(calc '%.2f' "$(median "${totals[@]}") / 1e6") | $(printf '%s\n' "${oks[@]}" | sort -u | tr '\n' ' ') |"
	rm -rf "$D/size$files"
done
fi
say ""
say "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg). Raw result lines: $LOG"
