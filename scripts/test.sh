#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# Usage: scripts/test.sh        (from anywhere inside the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."

# Formatting and lints are part of the suite: a warning fails it.
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
