#!/usr/bin/env bash
# What CI runs for the Node SDK: install from the lockfile, type-check the sources and the declarations, run the
# test suite against `vra-gateway demo --serve`.
#
#   VRA_GATEWAY_BIN=path/to/vra-gateway VRA_REQUIRE_SDK=1 clients/node/ci.sh
#
# VRA_GATEWAY_BIN defaults to <repo>/target/debug/vra-gateway (built by `cargo test`). With
# VRA_REQUIRE_SDK=1 a missing binary fails the suite; without it those tests are skipped.
set -euo pipefail
cd "$(dirname "$0")"

now() { echo "${EPOCHREALTIME/./}"; }   # microseconds (bash >= 5)
step() { local us=$(( $(now) - $2 )); printf '[timing] %s: %d.%01d s\n' "$1" $((us / 1000000)) $((us / 100000 % 10)); }
t0=$(now)

echo "node $(node --version), npm $(npm --version)"
t=$(now)
npm ci --no-audit --no-fund --loglevel=error
step "npm ci" "$t"

t=$(now)
npm run --silent typecheck
step "tsc --noEmit (JSDoc of src/, index.d.ts via test/types-check.ts)" "$t"

t=$(now)
node --test test/*.test.js
step "node --test" "$t"

step "clients/node/ci.sh total" "$t0"
