#!/usr/bin/env bash
# Install what building and testing vBus KMS needs on Debian 12, only where
# it is missing. Safe to run again. Run as root (apt-get).
set -euo pipefail

need=()
for pkg in softhsm2 opensc openssl curl ca-certificates gcc libc6-dev python3 python3-cryptography python3-venv; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  # Debian's own cargo is too old for this workspace: use rustup's stable.
  echo "installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi

if [ "${1:-}" = "--test" ] && ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
# cargo-deny, for deploy/check-deny.sh (licences, duplicates, sources,
# advisories). Built once (a few minutes); afterwards this is a version check.
if [ "${1:-}" = "--test" ] && ! cargo deny --version >/dev/null 2>&1; then
  echo "installing cargo-deny"
  cargo install --locked cargo-deny --version '~0.20'
fi

# MCUboot's imgtool (PyPI), for the firmware interoperability test: in its
# own virtual environment, never in the system's Python.
IMGTOOL_VENV="${KMS_IMGTOOL_VENV:-$HOME/.cache/vbus-kms/imgtool}"
if [ "${1:-}" = "--test" ] && [ ! -x "$IMGTOOL_VENV/bin/imgtool" ]; then
  echo "installing imgtool 2.5.0 into $IMGTOOL_VENV"
  if ! { /usr/bin/python3 -m venv "$IMGTOOL_VENV" && "$IMGTOOL_VENV/bin/pip" install -q imgtool==2.5.0; }; then
    echo "WARNING: imgtool could not be installed; the MCUboot test will say so" >&2
    rm -rf "$IMGTOOL_VENV"
  fi
fi
