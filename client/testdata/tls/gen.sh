#!/bin/sh
# Regenerates the TLS fixtures used by proto's unit tests (src/security.rs, src/mqtt.rs).
# Test-only keys: they protect nothing. Valid for 100 years so the tests never expire.
#   ca.pem          the CA that signed server.pem
#   server.pem/.key the broker's certificate, for IP 127.0.0.1 and DNS localhost
#   other-ca.pem    an unrelated CA: trusting only it makes server.pem "UnknownIssuer"
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
days=36500
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $days \
    -subj "/CN=pifleet test CA" -keyout "$tmp/ca.key" -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $days \
    -subj "/CN=unrelated test CA" -keyout "$tmp/other.key" -out other-ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=pifleet test broker" -keyout server.key -out "$tmp/server.csr"
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$tmp/ext"
openssl x509 -req -in "$tmp/server.csr" -CA ca.pem -CAkey "$tmp/ca.key" -CAcreateserial \
    -CAserial "$tmp/ca.srl" -days $days -extfile "$tmp/ext" -out server.pem
# rustls reads PKCS#8.
openssl pkcs8 -topk8 -nocrypt -in server.key -out "$tmp/server.p8" && mv "$tmp/server.p8" server.key
