"""One exception type for every user-facing failure: the CLI prints its message as one line and exits 2."""


class QuantconvError(Exception):
    """A problem with the user's input or environment; the message names the problem and the fix."""
