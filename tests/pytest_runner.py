"""`main` of every //tests py_test: runs pytest on the test files given as arguments.

Bazel starts this with the .venv interpreter, inside the test's runfiles tree (the cwd is
the workspace root there). It maps Bazel's test protocol onto pytest:
  XML_OUTPUT_FILE                                  -> --junitxml (Bazel's test.xml)
  TESTBRIDGE_TEST_ONLY (`--test_filter=EXPR`)      -> -k EXPR
  TEST_TOTAL_SHARDS / TEST_SHARD_INDEX (shard_count) -> round-robin split of the tests
and keeps pytest from writing into the (read-only) runfiles tree; HOME is the test's tmpdir.
"""

import os
import sys

import pytest


class _ShardPlugin:
    """Keeps every `total`-th collected test, starting at `index`."""

    def __init__(self, index: int, total: int):
        self.index = index
        self.total = total

    def pytest_collection_modifyitems(self, config, items):
        keep = [item for i, item in enumerate(items) if i % self.total == self.index]
        drop = [item for item in items if item not in keep]
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_args(argv, environ):
    """The pytest command line for test files `argv` under the Bazel test `environ`."""
    args = ["-p", "no:cacheprovider", "-o", "console_output_style=classic", "-ra"]
    if os.path.isfile("pyproject.toml"):
        args += ["-c", "pyproject.toml", "--rootdir", os.getcwd()]
    xml = environ.get("XML_OUTPUT_FILE")
    if xml:
        args += ["--junitxml", xml]
    test_filter = environ.get("TESTBRIDGE_TEST_ONLY")
    if test_filter:
        args += ["-k", test_filter]
    return args + list(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: pytest_runner.py TEST_FILE.py [pytest options]", file=sys.stderr)
        return 2
    # Don't drop __pycache__ into the runfiles tree (read-only in the sandbox).
    sys.dont_write_bytecode = True
    # Bazel leaves HOME unset; Keras/TF caches (~/.keras) then go to the test's own tmpdir.
    if "TEST_TMPDIR" in os.environ and not os.environ.get("HOME"):
        os.environ["HOME"] = os.environ["TEST_TMPDIR"]
    plugins = []
    total = int(os.environ.get("TEST_TOTAL_SHARDS", "0") or 0)
    if total > 1:
        status_file = os.environ.get("TEST_SHARD_STATUS_FILE")
        if status_file:
            # Tells Bazel this runner understands sharding.
            open(status_file, "a").close()
        plugins.append(_ShardPlugin(int(os.environ["TEST_SHARD_INDEX"]), total))
    code = pytest.main(pytest_args(argv, os.environ), plugins=plugins)
    # "No tests collected" (e.g. everything deselected in one shard) is not a failure.
    if code == pytest.ExitCode.NO_TESTS_COLLECTED and total > 1:
        return 0
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
