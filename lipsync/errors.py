"""User-facing errors: scripts print them as one line and exit non-zero, never a traceback wall."""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """Bad input or configuration the user can fix; the message is the whole story."""


def cli_entry(main):
    """Wrap a script's main(argv) so a UserError (or Ctrl-C) ends as one line on stderr and exit code 1/130."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper


class Cancelled(Exception):
    """The caller asked a long run to stop (a cancel button, a closed connection); nothing was written."""
