#!/bin/sh
# Interoperability of delta.c with librsync's own rdiff tool:
#   (a) our signature + delta, applied by `rdiff patch`;
#   (b) `rdiff signature`, our delta, our patch (BLAKE2 and MD4 signatures);
#   (c) our signature, `rdiff delta`, our patch;
#   (d) a delta with no basis, applied by `rdiff patch /dev/null`.
# Usage: test_delta_rdiff.sh PATH/TO/delta_tool. Exit 77 (skip) without rdiff.
set -eu

tool=$1
case $tool in
/*) ;;
*) tool=$PWD/$tool ;;
esac
[ -x "$tool" ] || { echo "no delta_tool at $tool" >&2; exit 1; }
if ! command -v rdiff >/dev/null 2>&1; then
	echo "rdiff is not installed: skipping"
	exit 77
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/test_delta_rdiff.XXXXXX")
trap 'rm -rf "$dir"' EXIT INT TERM
cd "$dir"

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# overwrite FILE at OFFSET with COUNT random bytes
scribble() {
	dd if=/dev/urandom of="$1" bs=1 seek="$2" count="$3" conv=notrunc status=none
}

# basis: 3 MiB of random data; target: scattered rewrites, an insertion, a
# deletion and growth.
head -c 3145728 /dev/urandom >basis
cp basis t0
scribble t0 1000 500
scribble t0 700000 10240
scribble t0 2000000 3
head -c 1500000 t0 >target
head -c 4000 /dev/urandom >>target
tail -c +1600001 t0 >>target
head -c 70000 /dev/urandom >>target
cmp -s basis target && fail "target equals basis"

nfail=0
check() { # NAME EXPECTED ACTUAL
	if cmp -s "$2" "$3"; then
		echo "ok - $1"
	else
		echo "not ok - $1"
		nfail=$((nfail + 1))
	fi
}

for pair in "basis target" "basis basis" "target basis" "empty target" "basis empty" \
	"empty empty"; do
	set -- $pair
	: >empty
	b=$1
	t=$2
	tag="$b->$t"

	# (a) ours -> rdiff patch
	"$tool" signature "$b" sig.ours
	"$tool" delta sig.ours "$t" delta.ours
	rdiff patch "$b" delta.ours out.a
	check "(a) our delta, rdiff patch: $tag" "$t" out.a

	# (b) rdiff signature -> our delta -> our patch (default: BLAKE2, RabinKarp)
	rdiff signature "$b" sig.rdiff
	"$tool" delta sig.rdiff "$t" delta.b
	"$tool" patch "$b" delta.b out.b
	check "(b) rdiff signature, our delta and patch: $tag" "$t" out.b
	rdiff patch "$b" delta.b out.b2
	check "(b) rdiff signature, our delta, rdiff patch: $tag" "$t" out.b2
	rdiff signature -b 1024 -S 8 -R rollsum "$b" sig.rdiff2
	"$tool" delta sig.rdiff2 "$t" delta.b3
	"$tool" patch "$b" delta.b3 out.b3
	check "(b) rdiff signature -b 1024 -S 8 -R rollsum: $tag" "$t" out.b3

	# (c) our signature -> rdiff delta -> our patch
	rdiff delta sig.ours "$t" delta.c
	"$tool" patch "$b" delta.c out.c
	check "(c) our signature, rdiff delta, our patch: $tag" "$t" out.c

	# (d) no basis
	"$tool" delta - "$t" delta.d
	rdiff patch /dev/null delta.d out.d
	check "(d) no-basis delta, rdiff patch: $tag" "$t" out.d
	"$tool" patch - delta.d out.d2
	check "(d) no-basis delta, our patch: $tag" "$t" out.d2
	rm -f sig.* delta.* out.*
done

# rdiff's MD4 signatures (rollsum and RabinKarp) are accepted, and the
# signatures we make (RabinKarp + MD4) are what `rdiff -H md4` makes.
for r in rollsum rabinkarp; do
	rdiff signature -H md4 -R "$r" basis sig.md4
	"$tool" delta sig.md4 target delta.md4 || fail "MD4 ($r) signature refused"
	rdiff patch basis delta.md4 out.md4
	check "rdiff -H md4 -R $r signature, our delta, rdiff patch" target out.md4
	rm -f sig.md4 delta.md4 out.md4
done
"$tool" signature basis sig.ours
magic=$(od -An -tx1 -N4 sig.ours | tr -d ' ')
[ "$magic" = 72730147 ] && fail "our signature still uses BLAKE2"
[ "$magic" = 72730146 ] || fail "our signature magic is $magic, not RabinKarp + MD4 (72730146)"
echo "ok - our signature is RabinKarp + MD4"
rm -f sig.ours

# A delta from rdiff that needs a basis is refused without one.
rdiff signature basis sig.rdiff
rdiff delta sig.rdiff target delta.rdiff
if "$tool" patch - delta.rdiff out.none 2>err.none; then
	fail "patch without a basis succeeded"
fi
grep -q "no basis" err.none || fail "no-basis refusal says: $(cat err.none)"
echo "ok - copy without a basis refused"

# Our delta is small: the change, not the file.
"$tool" signature basis sig.ours
"$tool" delta sig.ours target delta.ours
size=$(wc -c <delta.ours)
[ "$size" -lt 200000 ] || fail "delta of $size bytes"
echo "ok - delta is $size bytes"

[ "$nfail" -eq 0 ] || fail "$nfail checks failed"
