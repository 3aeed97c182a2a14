#!/usr/bin/env bash
# A demo PKI for trying TLS and mutual TLS on one machine (README,
# "Security"): a CA, careroute's certificate for localhost, and an IVR's
# client certificate. Production certificates come from your own CA
# (cert-manager, Vault, ...). Usage: bash examples/demo-pki.sh DIR
set -euo pipefail
dir="${1:?usage: demo-pki.sh DIR}"
mkdir -p "$dir"
cd "$dir"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# The CA.
key ca.key
openssl req -x509 -new -key ca.key -days 365 -subj "/CN=careroute demo CA" -out ca.crt

# careroute's certificate: the names clients connect to.
key server.key
openssl req -new -key server.key -subj "/CN=careroute" -out server.csr
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 90 \
  -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n') \
  -out server.crt 2>/dev/null

# The IVR's client certificate: its DNS name is what the credentials file
# names (certificate = "ivr.clinic.example").
key ivr.key
openssl req -new -key ivr.key -subj "/CN=ivr.clinic.example" -out ivr.csr
openssl x509 -req -in ivr.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 90 \
  -extfile <(printf 'subjectAltName=DNS:ivr.clinic.example\nextendedKeyUsage=clientAuth\n') \
  -out ivr.crt 2>/dev/null

rm -f ./*.csr ca.srl
chmod 600 ./*.key
echo "demo PKI in $dir: ca.crt, server.crt/.key, ivr.crt/.key"
