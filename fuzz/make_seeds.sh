#!/usr/bin/env bash
# Regenerates fuzz/corpus/*: seeds made by OpenSSL (CSRs, OCSP requests),
# taken from the repository (policy files) and made by our own code with
# the fixed keys of fuzz/src/lib.rs (audit logs and exports, firmware
# manifests: examples/make_seeds.rs). Only needed when a format changes:
# the seeds are committed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
corpus="$here/corpus"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

uuid=6f1c2a3e-9b4d-4c7a-8e2f-1a2b3c4d5e6f   # vbus_fuzz::HW_UUID
mkdir -p "$corpus"/{csr,est_enroll,ocsp_request,policy_file}

# Device CSRs: subject serialNumber and CN = module serial, SAN URI with the
# hardware UUID (what stations send), for each key type a profile accepts.
csr() { # name keyspec serial [extra req args...]
    local name=$1 keyspec=$2 serial=$3; shift 3
    openssl genpkey $keyspec -out "$tmp/$name.key" 2>/dev/null
    openssl req -new -key "$tmp/$name.key" -subj "/serialNumber=$serial/CN=$serial" \
        -addext "subjectAltName=URI:urn:uuid:$uuid" "$@" -outform DER -out "$tmp/$name.der"
    cp "$tmp/$name.der" "$corpus/csr/$name.der"
    openssl req -in "$tmp/$name.der" -inform DER -outform PEM -out "$corpus/csr/$name.pem"
    # EST body: base64 in 64-character lines (RFC 7030 transfer encoding).
    base64 -w 64 "$tmp/$name.der" > "$corpus/est_enroll/$name.b64"
}
csr p256-cpu "-algorithm EC -pkeyopt ec_paramgen_curve:prime256v1" VBUS-CPU-2412-000001
csr p256-cpu-ku "-algorithm EC -pkeyopt ec_paramgen_curve:prime256v1" VBUS-CPU-2412-000001 \
    -addext "keyUsage=critical,digitalSignature" -addext "extendedKeyUsage=clientAuth"
csr ed25519-periph "-algorithm ED25519" VBUS-PERIPH-2412-000001
csr rsa2048-comm "-algorithm RSA -pkeyopt rsa_keygen_bits:2048" VBUS-COMM-2412-000001
csr p256-pwr-extra-san "-algorithm EC -pkeyopt ec_paramgen_curve:prime256v1" VBUS-PWR-2412-000001 \
    -addext "basicConstraints=critical,CA:FALSE"
# A credential CSR (kmsctl station add): CN only.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$tmp/cred.key"
openssl req -new -key "$tmp/cred.key" -subj "/CN=station-01" -outform DER -out "$corpus/csr/credential.der"
# CRLF line ends, as some EST clients send.
sed 's/$/\r/' "$corpus/est_enroll/p256-cpu.b64" > "$corpus/est_enroll/p256-cpu-crlf.b64"

# OCSP requests about certificates of a CA: SHA-1 and SHA-256 CertIDs,
# with and without a nonce, one and several serials.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj "/CN=vBus Manufacturing Intermediate" -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>/dev/null
openssl ocsp -issuer "$tmp/ca.pem" -serial 0x5f0e8a1c2b3d4e5f60718293a4b5c6d7 -reqout "$corpus/ocsp_request/sha1-nonce.der" >/dev/null
openssl ocsp -issuer "$tmp/ca.pem" -serial 0x01 -no_nonce -reqout "$corpus/ocsp_request/sha1-no-nonce.der" >/dev/null
openssl ocsp -sha256 -issuer "$tmp/ca.pem" -serial 0x7f -serial 0x80 -serial 0x00ff \
    -reqout "$corpus/ocsp_request/sha256-three.der" >/dev/null
openssl ocsp -issuer "$tmp/ca.pem" -serial 0x42 -signer "$tmp/ca.pem" -signkey "$tmp/ca.key" \
    -reqout "$corpus/ocsp_request/signed.der" >/dev/null

# Policy files from the repository.
cp "$root/deploy/policy.toml" "$corpus/policy_file/deploy-policy.toml"
cp "$root/policies/tests/data/policy.toml" "$corpus/policy_file/tests-policy.toml"

# Audit logs and exports, firmware manifests: our own code, fixed keys.
(cd "$here" && cargo +nightly run -q --target-dir "$here/target" --example make_seeds -- "$corpus")
ls -l "$corpus"/*
