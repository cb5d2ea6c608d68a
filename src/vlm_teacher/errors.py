"""Errors meant for the user: the CLI prints them as one line, no traceback."""


class UserError(Exception):
    """Bad input or setup that the user can fix. The message names the problem
    and what to do about it; the CLI prints it on one line and exits with 2."""
