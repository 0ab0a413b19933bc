#!/usr/bin/env bash
# LiteLLM proxy for the benchmark comparison, in a private virtualenv.
#
#   bench/litellm.sh install                  install litellm[proxy] into bench/.venv (PyPI)
#   bench/litellm.sh version                  print the installed LiteLLM version
#   bench/litellm.sh serve PORT UPSTREAM_BASE run the proxy on 127.0.0.1:PORT with one model
#                                             route, `bench-model`, to the OpenAI-compatible
#                                             UPSTREAM_BASE (e.g. http://127.0.0.1:8080/v1);
#                                             clients authenticate with $LITELLM_BENCH_KEY
#
# `serve` execs the proxy (one worker), so the caller's $! is the proxy's pid. Nothing here
# reaches anything but PyPI (install) and 127.0.0.1.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${VRA_BENCH_VENV:-$HERE/.venv}
# The version the issue's reference numbers were measured with; override to try another.
SPEC=${VRA_LITELLM_SPEC:-litellm[proxy]}

cmd=${1:-}
case "$cmd" in
install)
    if [ -x "$VENV/bin/litellm" ]; then
        exit 0
    fi
    PY=$(command -v python3 || true)
    if [ -z "$PY" ]; then
        echo "litellm.sh: python3 not found" >&2
        exit 1
    fi
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$SPEC"
    ;;
version)
    "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))'
    ;;
serve)
    port=${2:?usage: litellm.sh serve PORT UPSTREAM_BASE}
    upstream=${3:?usage: litellm.sh serve PORT UPSTREAM_BASE}
    case "$upstream" in
    http://127.0.0.1:* | http://localhost:*) ;;
    *)
        echo "litellm.sh: the upstream must be on 127.0.0.1, got $upstream" >&2
        exit 2
        ;;
    esac
    conf=$(mktemp -d)/litellm.yaml
    # LiteLLM refuses to start without a master key; clients send it as their bearer token
    # (`vra-loadgen http --api-key`). Local-only, so a fixed value is fine.
    LITELLM_BENCH_KEY=${LITELLM_BENCH_KEY:-sk-vra-bench-local-only-not-a-secret}
    cat >"$conf" <<YAML
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench-model
      api_base: $upstream
      api_key: sk-bench
litellm_settings:
  drop_params: true
  telemetry: false
general_settings:
  master_key: $LITELLM_BENCH_KEY
YAML
    # No network: use the bundled model cost map, no telemetry, quiet logs.
    export LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False LITELLM_LOG=ERROR
    unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
    exec "$VENV/bin/litellm" --config "$conf" --host 127.0.0.1 --port "$port" --num_workers 1
    ;;
*)
    echo "usage: bench/litellm.sh install | version | serve PORT UPSTREAM_BASE" >&2
    exit 2
    ;;
esac
