#!/usr/bin/env bash
# Regenerates the CSR fixtures that need key types or digests our own code
# cannot produce (made by OpenSSL, an outside tool). Subject CN and
# serialNumber are the module serial the tests use for them.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
subj="/serialNumber=VBUS-COMM-2411-000001/CN=VBUS-COMM-2411-000001"
req() { openssl req -new -key "$1" -subj "$subj" -out "$2" "${@:3}"; }
openssl ecparam -name prime192v1 -genkey -noout -out "$tmp/p192.key";   req "$tmp/p192.key" p192.csr -sha256
openssl ecparam -name secp384r1 -genkey -noout -out "$tmp/p384.key";    req "$tmp/p384.key" p384.csr -sha384
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out "$tmp/rsa1024.key" 2>/dev/null; req "$tmp/rsa1024.key" rsa1024.csr -sha256
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/rsa2048.key" 2>/dev/null; req "$tmp/rsa2048.key" rsa2048.csr -sha256
req "$tmp/rsa2048.key" rsa2048-md5.csr -md5
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$tmp/rsa3072.key" 2>/dev/null; req "$tmp/rsa3072.key" rsa3072.csr -sha256
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out "$tmp/rsa4096.key" 2>/dev/null; req "$tmp/rsa4096.key" rsa4096.csr -sha256
openssl dsaparam -out "$tmp/dsap.pem" 2048 2>/dev/null; openssl gendsa -out "$tmp/dsa.key" "$tmp/dsap.pem" 2>/dev/null; req "$tmp/dsa.key" dsa.csr -sha256
openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/p256.key";   req "$tmp/p256.key" p256-sha1.csr -sha1
req "$tmp/p256.key" p256-sha384.csr -sha384
openssl genpkey -algorithm ED25519 -out "$tmp/ed.key"; req "$tmp/ed.key" ed25519.csr
