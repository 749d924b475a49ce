#!/usr/bin/env bash
# Run every test of vBus KMS against real SoftHSM2 tokens (each test makes
# its own in a temporary directory). Installs what it needs when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh --test
export PATH="$HOME/.cargo/bin:$PATH"
# The MCUboot interoperability test runs imgtool from here; when it could not
# be installed (no route to PyPI) that one test reports the skip instead of failing.
export KMS_IMGTOOL="${KMS_IMGTOOL:-${KMS_IMGTOOL_VENV:-$HOME/.cache/vbus-kms/imgtool}/bin/imgtool}"
[ -x "$KMS_IMGTOOL" ] || export KMS_IMGTOOL_MISSING_OK=1
# Dependency policy (deny.toml): licences, duplicate versions, sources, and
# RustSec advisories when the database can be fetched (else a SKIP line).
deploy/check-deny.sh
# The end-to-end tests run the built binaries: build them first.
cargo build --workspace --bins
# deploy/: the systemd unit's exposure score, the token set-up script and the
# example config on the built binaries (a few seconds; SKIP lines say what
# could not run here).
deploy/check-deploy.sh
cargo nextest run --workspace --no-fail-fast
cargo test --workspace --doc
