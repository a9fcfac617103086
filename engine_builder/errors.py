"""The one exception type users see: a message that says what went wrong and what to do."""


class PTQError(Exception):
    """An error caused by the user's input or environment; its message is one actionable line.

    The command line prints it without a traceback (unless --debug) and exits non-zero.
    """


def without_subject(message: str, name: str) -> str:
    """``message`` without a leading ``"<name>: "``: a report that lists files names each one once."""
    return message[len(name) + 2 :] if message.startswith(f"{name}: ") else message
