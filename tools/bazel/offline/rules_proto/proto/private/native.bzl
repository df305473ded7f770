"""Bazel's built-in ProtoInfo, under a name defs.bzl can re-export."""

NativeProtoInfo = ProtoInfo
