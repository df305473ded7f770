#!/bin/sh
# Stand-in for Bazel's coverage tools (see BUILD): they are not available offline.
echo "$0: 'bazel coverage' is not supported here: the real @remote_coverage_tools is" \
  "replaced by an offline stand-in (tools/bazel/offline/remote_coverage_tools)." \
  "Use 'make test' with pytest for coverage." >&2
exit 1
