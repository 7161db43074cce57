"""User-facing errors: the CLI prints these as one clear message, without a traceback."""


class RobustagError(Exception):
    """Bad input or configuration; the message names the file, line or option at fault."""


class DataFormatError(RobustagError):
    """A data file that cannot be parsed; the message names the file and line."""


_NO_VALUE = object()


class ParameterError(RobustagError):
    """A bad value of one named parameter. The library names the parameter as its API spells
    it (`data_dir /x: file not found`); the command line shows the flag instead (`--data-dir`)."""

    def __init__(self, parameter: str, message: str, value: object = _NO_VALUE):
        self.parameter, self.value, self.detail = parameter, value, message
        super().__init__(self.naming(parameter))

    def naming(self, name: str) -> str:
        shown = "" if self.value is _NO_VALUE else f" {self.value}"
        return f"{name}{shown}: {self.detail}"
