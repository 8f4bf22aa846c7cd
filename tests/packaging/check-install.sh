#!/bin/sh
# Installs the build into a scratch DESTDIR and checks what a user gets: the
# shared library (with its soname link and development link), the public
# headers, libmigrate.pc; then builds an out-of-tree program against that tree
# through pkg-config and runs it.
#
# usage: check-install.sh MESON BUILD_DIR PUBLIC_INCLUDE_DIR CONSUMER_C VERSION
# environment: MIG_PKG_CC      compiler command (default: cc)
#              MIG_PKG_CFLAGS  extra flags for the consumer (e.g. sanitizers)
#              PKG_CONFIG      pkg-config command (default: pkg-config)
set -eu

if [ $# -ne 5 ]; then
	echo "usage: $0 MESON BUILD_DIR PUBLIC_INCLUDE_DIR CONSUMER_C VERSION" >&2
	exit 2
fi
meson=$1
build=$2
srcinc=$3
consumer=$4
version=$5
cc=${MIG_PKG_CC:-cc}
extra_cflags=${MIG_PKG_CFLAGS:-}
pkgconfig=${PKG_CONFIG:-pkg-config}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mig-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dest=$tmp/root

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

for tool in "$pkgconfig" "${cc%% *}"; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "$0: '$tool' not found; skipping" >&2
		exit 77
	fi
done

# --- install ---------------------------------------------------------------
if ! "$meson" install -C "$build" --no-rebuild --destdir "$dest" >"$tmp/install.log" 2>&1; then
	cat "$tmp/install.log" >&2
	fail "meson install failed (is $build fully built? run: ninja -C $build)"
fi
echo "ok: meson install --destdir $dest"

# --- library ---------------------------------------------------------------
soname_link=$(find "$dest" -name 'libmigrate.so.0' | head -n 1)
if [ -z "$soname_link" ]; then
	find "$dest" -name 'libmigrate.so*' >&2
	fail "no libmigrate.so.0 under $dest"
fi
[ -e "$soname_link" ] || fail "$soname_link is a dangling link"
libdir=$(dirname "$soname_link")
[ -f "$libdir/libmigrate.so.$version" ] || fail "no $libdir/libmigrate.so.$version"
[ -e "$libdir/libmigrate.so" ] || fail "no development link $libdir/libmigrate.so"
if command -v readelf >/dev/null 2>&1; then
	readelf -d "$libdir/libmigrate.so.$version" | grep -q 'SONAME.*\[libmigrate\.so\.0\]' ||
		fail "libmigrate.so.$version does not have SONAME libmigrate.so.0"
fi
echo "ok: library in ${libdir#"$dest"}"

# --- headers ---------------------------------------------------------------
main_header=$(find "$dest" -path '*/include/migrate/migrate.h' | head -n 1)
[ -n "$main_header" ] || fail "migrate/migrate.h not installed"
incdir=$(dirname "$(dirname "$main_header")")
[ -f "$incdir/migrate/control.h" ] || fail "migrate/control.h not installed"
[ -f "$incdir/migrate/client.h" ] || fail "migrate/client.h not installed"
[ -f "$incdir/migrate/replicate.h" ] || fail "migrate/replicate.h not installed"
for h in "$srcinc"/migrate/*.h; do
	[ -f "$incdir/migrate/$(basename "$h")" ] ||
		fail "public header migrate/$(basename "$h") is not installed"
done
for h in "$incdir"/migrate/*; do
	[ -f "$srcinc/migrate/$(basename "$h")" ] ||
		fail "${h#"$dest"} is installed but is not a public header"
done
leaked=$(find "$dest" -name '*.pb-c.h')
[ -z "$leaked" ] || fail "generated protobuf-c headers installed: $leaked"
echo "ok: headers in ${incdir#"$dest"}"

# --- pkg-config ------------------------------------------------------------
pc=$(find "$dest" -name libmigrate.pc | head -n 1)
[ -n "$pc" ] || fail "libmigrate.pc not installed"
pcdir=$(dirname "$pc")

# PKG_CONFIG_PATH finds our .pc first (its Requires.private, e.g.
# libwebsockets, still come from the system); PKG_CONFIG_SYSROOT_DIR prefixes
# the -I/-L paths of the installed prefix with the DESTDIR.
pkg() {
	PKG_CONFIG_PATH="$pcdir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" \
	PKG_CONFIG_SYSROOT_DIR="$dest" "$pkgconfig" "$@"
}
modversion=$(pkg --modversion libmigrate) || fail "pkg-config cannot read libmigrate.pc"
[ "$modversion" = "$version" ] || fail "libmigrate.pc has version $modversion, not $version"
flags=$(pkg --cflags --libs libmigrate) || fail "pkg-config --cflags --libs libmigrate failed"
echo "ok: pkg-config libmigrate: $flags"
case " $flags " in
*" -I$incdir "*) ;;
*) fail "pkg-config cflags do not point at the installed headers ($incdir)" ;;
esac
case " $flags " in
*" -L$libdir "*) ;;
*) fail "pkg-config libs do not point at the installed library ($libdir)" ;;
esac
case " $flags " in
*" -lmigrate "*) ;;
*) fail "pkg-config libs do not contain -lmigrate" ;;
esac

# --- out-of-tree consumer --------------------------------------------------
# shellcheck disable=SC2086
if ! $cc -std=c99 -pedantic -Wall -Wextra -Werror $extra_cflags \
	-o "$tmp/consumer" "$consumer" $flags >"$tmp/cc.log" 2>&1; then
	cat "$tmp/cc.log" >&2
	fail "the consumer does not build against the installed tree"
fi
echo "ok: consumer builds"

LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
if command -v ldd >/dev/null 2>&1; then
	ldd "$tmp/consumer" | grep -q "=> $libdir/libmigrate\.so\.0 " ||
		fail "the consumer does not load the installed libmigrate.so.0: $(ldd "$tmp/consumer" | grep migrate)"
fi
rc=0
"$tmp/consumer" >"$tmp/out" 2>"$tmp/err" || rc=$?
sed 's/^/    /' "$tmp/out"
if [ "$rc" -ne 0 ]; then
	cat "$tmp/err" >&2
	fail "the consumer exited $rc"
fi
grep -qx "version $version" "$tmp/out" || fail "mig_version() is not $version"
grep -q '^strerror ..*' "$tmp/out" || fail "no mig_strerror() output"
grep -qx 'engine ok' "$tmp/out" || fail "the consumer could not create an engine"
grep -qx 'client ok' "$tmp/out" || fail "the consumer could not use the reconnect helper (client.h)"
grep -qx 'consumer: OK' "$tmp/out" || fail "the consumer did not finish"
echo "ok: consumer runs"
