"""User-facing errors: the CLI prints them as one line and exits with code 2, no traceback."""


class AgroError(Exception):
    """A problem with what the user gave (flags, config, data, paths), stated in one line."""
