import sys, os, groupbert_tf, tensorflow
def test_probe():
    print("FILE", groupbert_tf.__file__, "EXE", sys.executable, "PREFIX", sys.prefix, "HOME", os.environ.get("HOME"), "CWD", os.getcwd())
    assert False
