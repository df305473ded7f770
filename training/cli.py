"""One-line errors for the command-line programs of training/.

A configuration or data error (a bad flag value, a missing or malformed file, a busy or
unwritable run folder, an unreadable checkpoint) ends the program with
`<program>: error: <message>` on stderr and exit status 1: the message names the flag, file
(and line) or field; a traceback would only bury it. Other exceptions are bugs and keep
their traceback.
"""

import functools
import sys

from absl import logging

USER_ERRORS = (ValueError, OSError, FloatingPointError)


def one_line_errors(main, program):
    """Wraps an `absl.app` main so USER_ERRORS end it with one line and exit status 1."""

    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as error:
            logging.error("%s: %s", type(error).__name__, error)
            print(f"{program}: error: {error}", file=sys.stderr, flush=True)
            sys.exit(1)

    return wrapped
