"""Offline stand-in for @rules_proto//proto:defs.bzl.

Bazel 4 implements the proto rules natively; this forwards the names @bazel_tools loads.
"""

load("//proto/private:native.bzl", "NativeProtoInfo")

ProtoInfo = NativeProtoInfo

def proto_lang_toolchain(**attrs):
    native.proto_lang_toolchain(**attrs)

def proto_library(**attrs):
    native.proto_library(**attrs)
