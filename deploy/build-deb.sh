#!/usr/bin/env bash
# Build the Debian package vbus-kms (kmsd, kmsctl, the systemd unit, the
# example config as /etc/vbus-kms/kmsd.toml, vbus-kms-token-setup) with
# cargo-deb, installing cargo-deb first when it is missing. A release build:
# about 10 minutes on 2 cores from cold. Not part of deploy/test.sh or CI.
# Prints the path of the .deb (target/debian/vbus-kms_*.deb).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v dpkg-deb >/dev/null 2>&1 || { echo "dpkg-deb is needed (Debian)" >&2; exit 1; }
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb"
  cargo install --locked cargo-deb --version '^3.8'
fi
# -p kms: the package whose [package.metadata.deb] describes vbus-kms. --strip:
# the release profile keeps debug info (for profiling); the package does not.
cargo deb -p kms --locked --strip "$@"
