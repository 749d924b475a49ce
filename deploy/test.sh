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
# The end-to-end tests run the built binaries: build them first.
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast
cargo test --workspace --doc
