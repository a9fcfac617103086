"""The one exception type users see: a message that says what went wrong and what to do."""


class PTQError(Exception):
    """An error caused by the user's input or environment; its message is one actionable line.

    The command line prints it without a traceback (unless --debug) and exits non-zero.
    """
