#!/bin/sh
# Generates the throwaway PKI the TLS integration tests use, at build time, so
# that no key material is checked in. Everything is EC P-256.
#
#   gen-certs.sh OUTDIR
#
# OUTDIR receives (PEM):
#   ca.pem, ca.key                 the test CA
#   server.pem, server.key         engine cert signed by the CA: SAN DNS:localhost,
#                                  IP:127.0.0.1; EKU serverAuth+clientAuth (engines
#                                  use it as server cert and as client cert, mTLS)
#   rogue-ca.pem, rogue-ca.key     an unrelated CA
#   rogue.pem, rogue.key           same names as server.pem, signed by the rogue CA
#   wronghost.pem, wronghost.key   signed by the CA, SAN DNS:wrong.invalid only
#   expired.pem, expired.key       signed by the CA, right SANs, expired in 2001
# Certificates are valid for 10 years (except expired.pem).
set -eu

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
OUT=$1
OPENSSL=${OPENSSL:-openssl}
DAYS=3650
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/mig-certs.XXXXXX")
trap 'rm -rf "$TMP"' EXIT INT TERM

genkey() { # file
	"$OPENSSL" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
		-pkeyopt ec_param_enc:named_curve -out "$1" 2>/dev/null
	chmod 600 "$1"
}

# A self-signed CA: name, key file, cert file.
make_ca() {
	genkey "$2"
	"$OPENSSL" req -new -x509 -sha256 -days "$DAYS" -key "$2" -out "$3" \
		-subj "/O=libmigrate tests/CN=$1" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" \
		-addext "subjectKeyIdentifier=hash"
}

# A leaf: CN, SAN, CA cert, CA key, key file, cert file [, startdate enddate].
make_leaf() {
	cn=$1 san=$2 cacert=$3 cakey=$4 key=$5 cert=$6
	genkey "$key"
	ext="$TMP/ext.cnf"
	cat >"$ext" <<EXT
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT
	"$OPENSSL" req -new -sha256 -key "$key" -subj "/O=libmigrate tests/CN=$cn" \
		-out "$TMP/leaf.csr"
	if [ $# -ge 8 ]; then
		# x509 -req cannot backdate; `openssl ca` can (-startdate/-enddate).
		db="$TMP/ca-db"
		rm -rf "$db"
		mkdir -p "$db/new"
		: >"$db/index.txt"
		cat >"$db/ca.cnf" <<CNF
[ca]
default_ca = test
[test]
dir = $db
database = $db/index.txt
new_certs_dir = $db/new
rand_serial = yes
default_md = sha256
policy = anything
copy_extensions = none
unique_subject = no
[anything]
organizationName = optional
commonName = supplied
CNF
		"$OPENSSL" ca -batch -notext -config "$db/ca.cnf" -cert "$cacert" \
			-keyfile "$cakey" -in "$TMP/leaf.csr" -out "$cert" \
			-startdate "$7" -enddate "$8" -extfile "$ext" -extensions leaf \
			2>/dev/null
	else
		"$OPENSSL" x509 -req -sha256 -days "$DAYS" -in "$TMP/leaf.csr" \
			-CA "$cacert" -CAkey "$cakey" -CAcreateserial \
			-CAserial "$TMP/serial" -extfile "$ext" -extensions leaf \
			-out "$cert" 2>/dev/null
	fi
}

SAN="DNS:localhost,IP:127.0.0.1"
make_ca "libmigrate test CA" "$OUT/ca.key" "$OUT/ca.pem"
make_leaf "localhost" "$SAN" "$OUT/ca.pem" "$OUT/ca.key" "$OUT/server.key" "$OUT/server.pem"
make_leaf "wrong.invalid" "DNS:wrong.invalid" "$OUT/ca.pem" "$OUT/ca.key" \
	"$OUT/wronghost.key" "$OUT/wronghost.pem"
make_leaf "localhost" "$SAN" "$OUT/ca.pem" "$OUT/ca.key" "$OUT/expired.key" \
	"$OUT/expired.pem" 20000101000000Z 20010101000000Z
make_ca "libmigrate rogue CA" "$OUT/rogue-ca.key" "$OUT/rogue-ca.pem"
make_leaf "localhost" "$SAN" "$OUT/rogue-ca.pem" "$OUT/rogue-ca.key" "$OUT/rogue.key" \
	"$OUT/rogue.pem"

# Sanity: the chain verifies where it should and not where it should not.
"$OPENSSL" verify -CAfile "$OUT/ca.pem" -purpose sslserver "$OUT/server.pem" >/dev/null
"$OPENSSL" verify -CAfile "$OUT/ca.pem" -purpose sslclient "$OUT/server.pem" >/dev/null
"$OPENSSL" verify -CAfile "$OUT/rogue-ca.pem" "$OUT/rogue.pem" >/dev/null
if "$OPENSSL" verify -CAfile "$OUT/ca.pem" "$OUT/rogue.pem" >/dev/null 2>&1; then
	echo "$0: rogue.pem verifies against the test CA" >&2
	exit 1
fi
if "$OPENSSL" verify -CAfile "$OUT/ca.pem" "$OUT/expired.pem" >/dev/null 2>&1; then
	echo "$0: expired.pem is not expired" >&2
	exit 1
fi
