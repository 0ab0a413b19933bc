"""Stubs generated from proto/vra/gateway/v1/gateway.proto by clients/gen.sh. Do not edit.

Internal: the public API of :mod:`vra_gateway` exposes plain values, never these messages.
"""
