"""A repository rule that makes the checkout's `.venv/bin/python` Bazel's Python toolchain.

The generated repository holds a `py_runtime` whose `interpreter_path` is the absolute path
of `<workspace>/.venv/bin/python` (and the same interpreter as the launcher's shebang), so
`py_binary`/`py_test` run with tensorflow, keras, pytest, ... importable, wherever the
checkout lives. The venv itself is created by `make venv`.
"""

def _venv_python_impl(rctx):
    workspace_root = rctx.path(Label("@//:WORKSPACE")).dirname
    python = workspace_root
    for part in rctx.attr.interpreter.split("/"):
        python = python.get_child(part)
    if not python.exists:
        fail("%s does not exist: create the virtualenv first (`make venv`)." % python)

    # Probe the interpreter: a venv must be able to import the packages the tests need.
    probe = rctx.execute([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    if probe.return_code != 0:
        fail("%s does not run:\n%s" % (python, probe.stderr))

    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    rctx.file("BUILD", """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

package(default_visibility = ["//visibility:public"])

# Python {version} from {python}
py_runtime(
    name = "py3_runtime",
    interpreter_path = "{python}",
    python_version = "PY3",
    stub_shebang = "#!{python}",
)

py_runtime_pair(
    name = "runtime_pair",
    py2_runtime = None,
    py3_runtime = ":py3_runtime",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""".format(python = python, version = probe.stdout.strip()))

venv_python = repository_rule(
    implementation = _venv_python_impl,
    attrs = {
        "interpreter": attr.string(
            default = ".venv/bin/python",
            doc = "The interpreter, relative to the workspace root.",
        ),
    },
    # Re-evaluated on every server start: it is cheap and follows a re-created venv.
    local = True,
    doc = "Exposes the workspace's virtualenv interpreter as a Python toolchain.",
)
