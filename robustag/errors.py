"""User-facing errors: the CLI prints these as one clear message, without a traceback."""


class RobustagError(Exception):
    """Bad input or configuration; the message names the file, line or option at fault."""


class DataFormatError(RobustagError):
    """A data file that cannot be parsed; the message names the file and line."""
