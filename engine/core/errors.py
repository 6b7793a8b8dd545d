"""The one exception type for bad input: the CLI prints its message on one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (config, checkpoint, store); the message names the culprit and the fix."""
