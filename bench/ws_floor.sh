#!/bin/bash
# ws_floor.sh: the floor under a fresh file transfer on loopback
# (docs/BENCHMARKS.md, "File state", "The floor under a fresh transfer").
#
#   bench/ws_floor.sh [--build DIR (a build with bench/ built)] [--reps N (5)]
#
# One table, every row against a raw TCP copy of the same 64 MiB (8 x 8 MiB,
# random) measured alternately in the same run:
#  - libwebsockets alone (bench/ws_floor.c), one thread per side, set up as
#    libmigrate's transport, then with the work a libmigrate destination
#    must do added one piece at a time: XXH3-128 of every file on both
#    sides, the copy out of lws's read buffer (libmigrate reassembles whole
#    messages), the files made durable before the acknowledgement;
#  - a raw TCP copy whose receiver makes the files durable (bench_files
#    tcp-recv --fsync), and libmigrate itself: two engine processes (bench_files engine), a fresh
#    destination, default options, time to COMMITTED.
# Raw results are kept in a temporary folder it names.
set -euo pipefail
SRCDIR=$(cd "$(dirname "$0")/.." && pwd)
BUILD=
REPS=5
while [ $# -gt 0 ]; do
	case "$1" in
	--build) BUILD=$(cd "$2" && pwd); shift 2 ;;
	--reps) REPS=$2; shift 2 ;;
	-h|--help) sed -n '2,17p' "$0"; exit 0 ;;
	*) echo "unknown argument $1" >&2; exit 2 ;;
	esac
done
if [ -z "$BUILD" ]; then
	BUILD=/tmp/ws-floor-build
	[ -d "$BUILD" ] || meson setup "$BUILD" "$SRCDIR" --buildtype=release -Dtests=false \
		-Dwerror=false >/dev/null
	ninja -C "$BUILD" bench/ws_floor bench/bench_files >/dev/null
fi
FLOOR=$BUILD/bench/ws_floor
BIN=$BUILD/bench/bench_files
[ -x "$FLOOR" ] && [ -x "$BIN" ] || { echo "no ws_floor/bench_files in $BUILD" >&2; exit 1; }
W=$(mktemp -d /tmp/ws_floor.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$W/data" "$W/roots" "$W/tcp.dst"
}
trap cleanup EXIT

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
calc() { awk "BEGIN {printf \"$1\", $2}"; }
kv() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -1; }

"$BIN" gen "$W/data" --files 8 --file-size 8M --seed 7 --kind random
BYTES=$((64 * 1024 * 1024))

echo "ws_floor.sh: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), libmigrate $(git -C "$SRCDIR" describe --always --dirty 2>/dev/null || echo '?'), $REPS runs per row; raw output in $W"
echo ""
echo "| what moves the 64 MiB | raw TCP (MB/s, median) | it (MB/s, median) | it / raw TCP (median of runs) | runs |"
echo "|---|---:|---:|---:|---|"

# ws_floor rows: its own raw TCP copy alternates with each run.
ROWS=(
	"libwebsockets alone (64 KiB reads and fragments)|"
	"+ XXH3-128 of every file on both sides, checked|--digest"
	"+ the receiver copies each piece out of lws's buffer|--digest --rx-copy"
	"+ the files durable before the acknowledgement|--rx-copy --digest --fsync"
)
for row in "${ROWS[@]}"; do
	IFS='|' read -r what args <<<"$row"
	name=$(tr -c 'a-z0-9\n' '-' <<<"${args:-bare}" | sed 's/^-*//')
	# shellcheck disable=SC2086
	(cd "$W" && timeout 600 "$FLOOR" --dir "$W/data" --reps "$REPS" $args) >"$W/$name.txt"
	tcp=(); it=(); r=()
	while read -r _ _ _ t _ _ _ s _ _ _ q; do
		tcp+=("$t"); it+=("$s"); r+=("$q")
	done < <(sed -n 's/^run [0-9]*: tcp \([0-9.]*\) ms .*, ws \([0-9.]*\) ms .*ws\/tcp \([0-9.]*\)$/x x x \1 x x x \2 x x x \3/p' "$W/$name.txt")
	echo "| $what | $(calc '%.0f' "$BYTES / $(median "${tcp[@]}") / 1000") | $(calc '%.0f' "$BYTES / $(median "${it[@]}") / 1000") | $(median "${r[@]}") | $(IFS=,; echo "${r[*]}" | sed 's/,/, /g') |"
done

# A raw TCP copy (bench_files tcp-send/recv; with --fsync the receiver makes
# the files durable before it acknowledges), then a fresh migration between
# two engines, alternately.
tcp_copy() {
	rm -rf "$W/tcp.dst" "$W/tcp.out"
	sync
	"$BIN" tcp-recv --listen 127.0.0.1 --port 0 --out "$W/tcp.dst" "$@" >"$W/tcp.out" &
	local rp=$!
	PIDS+=("$rp")
	local port=
	for _ in $(seq 100); do
		port=$(awk '/^port / {print $2}' "$W/tcp.out" 2>/dev/null)
		[ -n "$port" ] && break
		sleep 0.05
	done
	local line
	line=$(timeout 120 "$BIN" tcp-send --to "127.0.0.1:$port" "$W/data")
	wait "$rp"
	diff -r -q "$W/data" "$W/tcp.dst" >/dev/null || { echo "tcp copy differs" >&2; exit 1; }
	kv "$line" time_us
}
migrate() {
	local ra=$W/roots/A rb=$W/roots/B
	rm -rf "$W/roots"
	mkdir -p "$ra" "$rb/.mig-cache"
	cp -a "$W/data" "$ra/u1"
	sync
	"$BIN" engine --root "$rb" --id B --listen 127.0.0.1 --port 0 --timeout-s 100 \
		>"$W/dst.out" 2>"$W/dst.err" &
	local dp=$!
	PIDS+=("$dp")
	local url=
	for _ in $(seq 100); do
		url=$(awk '/^url / {print $2}' "$W/dst.out" 2>/dev/null)
		[ -n "$url" ] && break
		sleep 0.05
	done
	[ -n "$url" ] || { cat "$W/dst.err" >&2; exit 1; }
	local res
	res=$(timeout 120 "$BIN" engine --root "$ra" --id A --listen 127.0.0.1 --port 0 \
		--user u1 --to "$url" --timeout-s 100 2>"$W/src.err" | grep '^result ' || true)
	kill -TERM "$dp"
	wait "$dp" || true
	[ "$(kv "$res" state)" = committed ] && diff -r -q "$ra/.mig-cache/u1" "$rb/u1" >/dev/null ||
		{ cat "$W/src.err" >&2; echo "migration failed or files differ" >&2; exit 1; }
	echo "$res" >>"$W/libmigrate.txt"
	kv "$res" duration_us
}
tcp=(); it=(); r=(); tf=(); rf=()
for _ in $(seq "$REPS"); do
	t=$(tcp_copy)
	f=$(tcp_copy --fsync)
	m=$(migrate)
	tcp+=("$t"); it+=("$m"); r+=("$(calc '%.3f' "$t / $m")")
	tf+=("$f"); rf+=("$(calc '%.3f' "$t / $f")")
done
echo "| raw TCP, the files durable before the acknowledgement (\`bench_files tcp-recv --fsync\`) | $(calc '%.0f' "$BYTES / $(median "${tcp[@]}")") | $(calc '%.0f' "$BYTES / $(median "${tf[@]}")") | $(median "${rf[@]}") | $(IFS=,; echo "${rf[*]}" | sed 's/,/, /g') |"
echo "| libmigrate: two engines, fresh destination, default options, to COMMITTED | $(calc '%.0f' "$BYTES / $(median "${tcp[@]}")") | $(calc '%.0f' "$BYTES / $(median "${it[@]}")") | $(median "${r[@]}") | $(IFS=,; echo "${r[*]}" | sed 's/,/, /g') |"
