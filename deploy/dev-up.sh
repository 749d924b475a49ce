#!/usr/bin/env bash
# Build vBus KMS and run a self-contained development appliance: a SoftHSM2
# token created on first run, its PIN in a 0600 file, everything under
# ${KMS_DEV_DIR:-./dev}. Safe to run again: an existing appliance is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
dir="${KMS_DEV_DIR:-dev}"
cargo build --release --bins
target/release/kmsctl quickstart "$dir" ${KMS_DEV_API:+--api "$KMS_DEV_API"} ${KMS_DEV_PUB:+--pub "$KMS_DEV_PUB"}
exec target/release/kmsd --config "$dir/kmsd.toml"
