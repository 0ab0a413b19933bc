#!/usr/bin/env bash
# CI of the Python SDK: a venv in clients/python/.venv (gitignored), the pinned dev tools, the
# package, a check that clients/gen.sh reproduces the committed stubs, then the pytest suite
# against a real `vra-gateway demo --serve` ($VRA_GATEWAY_BIN, default target/debug/vra-gateway).
#
#   VRA_GATEWAY_BIN=/path/to/vra-gateway VRA_REQUIRE_SDK=1 bash clients/python/ci.sh
#
# pip uses its default cache (outside the clone), so a warm run installs nothing from the network.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
python_bin="${PYTHON_FOR_VENV:-python3}"

start=$SECONDS
step_start=$SECONDS
step() {
  echo "ci.sh: $1 ($((SECONDS - step_start)) s)"
  step_start=$SECONDS
}

if [ ! -x "$venv/bin/python" ]; then
  "$python_bin" -m venv "$venv"
fi
step "venv $venv ready"

"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements-dev.txt"
# --no-build-isolation: the pinned setuptools above is the build backend, so no per-run download.
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps "$here"
# The dependencies it declares must be satisfied by what is installed.
"$venv/bin/python" -m pip check >/dev/null
step "installed requirements-dev.txt and vra-gateway-client"

PYTHON="$venv/bin/python" bash "$root/clients/gen.sh"
changes="$(git -C "$root" status --porcelain -- clients/)"
if [ -n "$changes" ]; then
  echo "ci.sh: clients/gen.sh changed files under clients/ — commit the regenerated files:" >&2
  echo "$changes" >&2
  git -C "$root" --no-pager diff --stat -- clients/ >&2
  git -C "$root" --no-pager diff -- clients/ | head -200 >&2
  exit 1
fi
step "generated files match the committed ones"

# Run from clients/python so the installed package (not the source tree) is what gets imported.
(cd "$here" && "$venv/bin/python" -m pytest -q -p no:cacheprovider tests)
step "pytest"

echo "ci.sh: Python SDK OK in $((SECONDS - start)) s"
