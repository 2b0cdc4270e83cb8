#!/usr/bin/env bash
# Regenerate client/dualblade/v1 from protos/ with the pinned grpcio-tools (see requirements-dev.txt).
# Output dir defaults to the committed location; tests pass a temp dir and diff.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-client/dualblade/v1}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python -m grpc_tools.protoc -I protos --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
  protos/dualblade/v1/dualblade.proto
mkdir -p "$out"
cp "$tmp"/dualblade/v1/dualblade_pb2.py "$tmp"/dualblade/v1/dualblade_pb2.pyi \
   "$tmp"/dualblade/v1/dualblade_pb2_grpc.py "$out"/
