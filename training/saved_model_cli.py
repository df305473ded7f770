"""`saved_model_cli` that can run SavedModels holding tensorflow-text ops.

  python -m training.saved_model_cli run --dir saved_models/groupbert-mini/1 \
      --tag_set serve --signature_def serving_default --input_exprs 'text_a=["Hello world"]'

Plain `saved_model_cli run` fails on our exports ("Op type not registered
'WordpieceTokenizeWithOffsets'..."): the ops register on `import tensorflow_text`.
Every argument is passed to TensorFlow's saved_model_cli unchanged.
"""

import sys

import tensorflow_text  # noqa: F401  pylint: disable=unused-import  (registers the ops)
from tensorflow.python.tools import saved_model_cli


def main():
    sys.argv[0] = "saved_model_cli"
    saved_model_cli.main()


if __name__ == "__main__":
    main()
