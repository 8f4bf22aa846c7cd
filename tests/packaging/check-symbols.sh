#!/bin/sh
# The shared library must export only mig_* symbols (plus the linker's own
# _init/_fini/_edata/_end/__bss_start markers), and at least 20 of them so we
# know the check sees something. With the public include directory as second
# argument, the exported functions must also match the MIG_EXPORT
# declarations of the public headers, both ways.
#
# usage: check-symbols.sh LIBRARY [INCLUDE_DIR]
set -eu

if [ $# -lt 1 ]; then
	echo "usage: $0 LIBRARY [INCLUDE_DIR]" >&2
	exit 2
fi
lib=$1
incdir=${2:-}
nm=${NM:-nm}
min=20

if ! command -v "$nm" >/dev/null 2>&1; then
	echo "$0: '$nm' not found (binutils); skipping" >&2
	exit 77
fi
if [ ! -f "$lib" ]; then
	echo "FAIL: no library at $lib" >&2
	exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! "$nm" -D --defined-only "$lib" >"$tmp/nm"; then
	echo "FAIL: $nm -D --defined-only $lib failed" >&2
	exit 1
fi

# "ADDRESS TYPE NAME[@VERSION]" -> "NAME TYPE"
awk 'NF >= 3 { n = $3; sub(/@.*/, "", n); print n, $2 }' "$tmp/nm" | sort -u >"$tmp/syms"

status=0

grep -vE '^(_init|_fini|_edata|_end|__bss_start|__bss_start__|__bss_end__|_bss_end__|__end__) ' \
	"$tmp/syms" | grep -vE '^mig_' >"$tmp/bad" || true
if [ -s "$tmp/bad" ]; then
	echo "FAIL: $lib exports symbols outside the mig_ namespace:" >&2
	sed 's/^/    /' "$tmp/bad" >&2
	status=1
fi

grep -E '^mig_' "$tmp/syms" | cut -d' ' -f1 | sort -u >"$tmp/exported"
count=$(wc -l <"$tmp/exported")
count=$((count + 0))
if [ "$count" -lt "$min" ]; then
	echo "FAIL: $lib exports only $count mig_ symbols (expected at least $min)" >&2
	status=1
fi

if [ -n "$incdir" ]; then
	# Function names declared with MIG_EXPORT in the public headers.
	cat "$incdir"/migrate/*.h |
		sed -n 's/^[[:space:]]*MIG_EXPORT[^(]*[^A-Za-z0-9_(]\([A-Za-z_][A-Za-z0-9_]*\)[[:space:]]*(.*/\1/p' |
		sort -u >"$tmp/declared"
	comm -23 "$tmp/exported" "$tmp/declared" >"$tmp/undeclared"
	comm -13 "$tmp/exported" "$tmp/declared" >"$tmp/missing"
	if [ -s "$tmp/undeclared" ]; then
		echo "FAIL: exported but not declared MIG_EXPORT in a public header:" >&2
		sed 's/^/    /' "$tmp/undeclared" >&2
		status=1
	fi
	if [ -s "$tmp/missing" ]; then
		echo "FAIL: declared MIG_EXPORT in a public header but not exported (callers cannot link):" >&2
		sed 's/^/    /' "$tmp/missing" >&2
		status=1
	fi
fi

if [ "$status" -eq 0 ]; then
	echo "ok: $lib exports $count mig_ symbols and nothing else"
fi
exit $status
