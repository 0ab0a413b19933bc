#!/usr/bin/env bash
# The official OpenAI client libraries against the gateway's OpenAI-compatible door: the
# `openai` Python package (pinned in python/requirements.txt) in a venv of its own
# (tests/openai/python/.venv, gitignored) and the `openai` npm package (node/package-lock.json),
# against `vra-gateway demo --serve` ($VRA_GATEWAY_BIN, default target/debug/vra-gateway, built
# by `cargo test`).
#
#   VRA_GATEWAY_BIN=/path/to/vra-gateway VRA_REQUIRE_SDK=1 bash tests/openai/ci.sh
#
# pip and npm use their default caches (outside the clone), so a warm run downloads nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/python/.venv"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON_FOR_VENV:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/python/requirements.txt"
"$venv/bin/python" -m pytest -q "$here/python"
(cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error && node --test door.test.js)
