#!/usr/bin/env bash
# Regenerates everything derived from proto/vra/gateway/v1/gateway.proto:
#   - the Python stubs committed in clients/python/src/vra_gateway/_pb/
#     (gateway_pb2.py, gateway_pb2.pyi, gateway_pb2_grpc.py), with grpcio-tools;
#   - the Node package's copy of the proto, clients/node/proto/vra/gateway/v1/gateway.proto.
#
# Usage: [PYTHON=/path/to/python] clients/gen.sh      (runnable from any directory)
# PYTHON must have grpcio-tools installed, at the version pinned in
# clients/python/requirements-dev.txt (CI checks that the output matches what is committed).
#
# protoc names the generated modules after the proto's path (vra/gateway/v1/...), so the grpc
# stub imports `from vra.gateway.v1 import gateway_pb2`. The proto keeps that path (it is the
# file name registered in the descriptor pool and seen by reflection); the one import line is
# rewritten to a relative import so the stubs work inside the `vra_gateway._pb` package.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
proto_rel="vra/gateway/v1/gateway.proto"
out="$root/clients/python/src/vra_gateway/_pb"

if ! "$python" -c 'import grpc_tools.protoc' 2>/dev/null; then
  echo "gen.sh: $python has no grpcio-tools; install clients/python/requirements-dev.txt first" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$python" -m grpc_tools.protoc \
  -I "$root/proto" \
  --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
  "$root/proto/$proto_rel"

gen="$tmp/vra/gateway/v1"
sed -i 's/^from vra\.gateway\.v1 import gateway_pb2 as /from . import gateway_pb2 as /' \
  "$gen/gateway_pb2_grpc.py"
if grep -q '^from vra\.' "$gen/gateway_pb2_grpc.py"; then
  echo "gen.sh: the generated import line changed; update the sed in clients/gen.sh" >&2
  exit 1
fi

mkdir -p "$out"
for f in gateway_pb2.py gateway_pb2.pyi gateway_pb2_grpc.py; do
  cp "$gen/$f" "$out/$f"
done

node_proto="$root/clients/node/proto/$proto_rel"
mkdir -p "$(dirname "$node_proto")"
cp "$root/proto/$proto_rel" "$node_proto"

echo "gen.sh: wrote ${out#"$root"/}/{gateway_pb2.py,gateway_pb2.pyi,gateway_pb2_grpc.py} and ${node_proto#"$root"/}"
