#!/bin/bash
# link_floor.sh: RSS of a process that only links a set of libraries and calls
# nothing (bench/link_floor.c), against one that links libc alone: the floor
# under the idle-RSS target of the sandwich benchmark (docs/BENCHMARKS.md,
# "The floor").
#
#   bench/link_floor.sh [--reps N (3)] [--nofile N (the shell's ulimit -n)]
#                       [--libmigrate DIR (a build's libmigrate/ folder)]
#
# Prints a Markdown table of medians (kB) and keeps each run's full output,
# with the per-library Rss, in a temporary folder it names.
set -euo pipefail
REPS=3
NOFILE=$(ulimit -n)
LIBMIGRATE=
while [ $# -gt 0 ]; do
	case "$1" in
	--reps) REPS=$2; shift 2 ;;
	--nofile) NOFILE=$2; shift 2 ;;
	--libmigrate) LIBMIGRATE=$(cd "$2" && pwd); shift 2 ;;
	-h|--help) sed -n '2,11p' "$0"; exit 0 ;;
	*) echo "unknown argument $1" >&2; exit 2 ;;
	esac
done
SRC=$(cd "$(dirname "$0")" && pwd)/link_floor.c
W=$(mktemp -d /tmp/link_floor.XXXXXX)
CC=(cc -O2 -Wall -Wextra)
NA=(-Wl,--no-as-needed)

# name|what it links|cc arguments
PROGS=(
	"plain|libc only|"
	"lws|libwebsockets (brings libssl, libcrypto, libz, libcap)|${NA[*]} -lwebsockets"
	"lws-context|libwebsockets, and an lws context made as transport.c makes it|-DWITH_LWS_CONTEXT ${NA[*]} -lwebsockets"
	"link-set|libmigrate's link set: lws, OpenSSL, protobuf-c, librsync, zstd, xxhash|${NA[*]} -lwebsockets -lprotobuf-c -lssl -lcrypto -lrsync -lzstd -lxxhash"
	"no-rsync-zstd|the link set without librsync and zstd|${NA[*]} -lwebsockets -lprotobuf-c -lssl -lcrypto -lxxhash"
	"rsync|librsync only (brings libb2, libgomp)|${NA[*]} -lrsync"
	"zstd|libzstd only|${NA[*]} -lzstd"
	"crypto|libcrypto only|${NA[*]} -lcrypto"
)
if [ -n "$LIBMIGRATE" ]; then
	PROGS+=("libmigrate|libmigrate.so from $LIBMIGRATE|${NA[*]} -L$LIBMIGRATE -lmigrate -Wl,-rpath,$LIBMIGRATE")
fi

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

echo "link_floor: $(date -u +%Y-%m-%dT%H:%MZ), ulimit -n $NOFILE, $REPS runs each; raw output in $W"
echo ""
echo "| program | links | VmRSS kB | RssAnon kB | RssFile kB | VmRSS − plain |"
echo "|---|---|---:|---:|---:|---:|"
base=
for p in "${PROGS[@]}"; do
	IFS='|' read -r name what args <<<"$p"
	# shellcheck disable=SC2086
	"${CC[@]}" -o "$W/$name" "$SRC" $args
	v=(); a=(); f=()
	for r in $(seq "$REPS"); do
		(ulimit -n "$NOFILE"; "$W/$name") >"$W/$name.$r.txt"
		read -r _ vr _ ar _ fr <"$W/$name.$r.txt"
		v+=("$vr"); a+=("$ar"); f+=("$fr")
	done
	mv=$(median "${v[@]}")
	[ -n "$base" ] || base=$mv
	echo "| $name | $what | $mv | $(median "${a[@]}") | $(median "${f[@]}") | $(awk -v a="$mv" -v b="$base" 'BEGIN {printf "%+.2f MiB", (a - b) / 1024}') |"
done
