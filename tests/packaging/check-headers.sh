#!/bin/sh
# Header hygiene: every public header under <include dir>/migrate must compile
# on its own (and twice, for its include guard) with nothing but the public
# include directory on the path, as strict C99 or C++11, and must not include
# the headers of the libraries libmigrate uses internally.
#
# usage: check-headers.sh c|cxx INCLUDE_DIR [COMPILER [ARGS...]]
set -eu

if [ $# -lt 2 ]; then
	echo "usage: $0 c|cxx INCLUDE_DIR [COMPILER [ARGS...]]" >&2
	exit 2
fi
mode=$1
incdir=$2
shift 2

case "$mode" in
c)
	[ $# -gt 0 ] || set -- cc
	ext=c
	flags="-x c -std=c99 -pedantic -Werror -Wall -Wextra -Wstrict-prototypes -Wundef"
	;;
cxx)
	[ $# -gt 0 ] || set -- c++
	ext=cpp
	flags="-x c++ -std=c++11 -pedantic -Werror -Wall -Wextra -Wundef"
	;;
*)
	echo "$0: mode must be c or cxx, not '$mode'" >&2
	exit 2
	;;
esac

if ! command -v "$1" >/dev/null 2>&1; then
	echo "$0: compiler '$1' not found; skipping" >&2
	exit 77
fi

if [ ! -d "$incdir/migrate" ]; then
	echo "FAIL: no directory $incdir/migrate" >&2
	exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ls "$incdir"/migrate/*.h >"$tmp/headers" 2>/dev/null || true
if [ ! -s "$tmp/headers" ]; then
	echo "FAIL: no headers in $incdir/migrate" >&2
	exit 1
fi

status=0

# The public API is these headers (a missing one would otherwise go unseen).
for required in migrate.h control.h client.h replicate.h; do
	if [ ! -f "$incdir/migrate/$required" ]; then
		echo "FAIL: public header migrate/$required is missing" >&2
		status=1
	fi
done

# 1. No internal dependency leaks through an #include.
forbidden='(libwebsockets|lws[-_][A-Za-z0-9_-]*\.h|librsync|protobuf-c|\.pb-c\.h|openssl/|zstd)'
while IFS= read -r h; do
	if grep -nE "^[[:space:]]*#[[:space:]]*include[[:space:]]*[<\"][^>\"]*$forbidden" "$h" \
		>"$tmp/bad"; then
		echo "FAIL: $h includes an internal dependency's header:" >&2
		sed 's/^/    /' "$tmp/bad" >&2
		status=1
	fi
	# Any <migrate/...> a public header includes must itself be public.
	grep -oE "^[[:space:]]*#[[:space:]]*include[[:space:]]*[<\"]migrate/[^>\"]+" "$h" |
		sed -E 's/.*[<"]//' >"$tmp/inc" || true
	while IFS= read -r inc; do
		if [ ! -f "$incdir/$inc" ]; then
			echo "FAIL: $h includes <$inc>, which is not a public header" >&2
			status=1
		fi
	done <"$tmp/inc"
done <"$tmp/headers"

# 2. Each header compiles alone, with nothing but the public include dir.
n=0
while IFS= read -r h; do
	name=migrate/$(basename "$h")
	src=$tmp/tu$n.$ext
	n=$((n + 1))
	cat >"$src" <<TU
#include <$name>
#include <$name>
int main(void)
{
	return 0;
}
TU
	# shellcheck disable=SC2086
	if "$@" $flags -I"$incdir" -c "$src" -o "$tmp/tu.o" >"$tmp/out" 2>&1; then
		echo "ok: $name ($mode)"
	else
		echo "FAIL: $name does not compile alone as $mode ($* $flags):" >&2
		cat "$tmp/out" >&2
		status=1
	fi
done <"$tmp/headers"

exit $status
