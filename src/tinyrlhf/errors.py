"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""


class TinyRLHFError(ValueError):
    """Base of every user-facing error. `str(err)` is the whole message."""


class DataError(TinyRLHFError):
    """Malformed data: the message names the file, line number and field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            where += ": "
        what = f"field '{field}': " if field is not None else ""
        super().__init__(f"{where}{what}{message}")
        self.path, self.line, self.field = path, line, field


class ConfigError(TinyRLHFError):
    """Bad config file, unknown key or bad value: the message names the key. `key` (dotted, when the error
    is about one config key) lets the loader say whether a file line or a command-line override set it."""

    def __init__(self, message: str, *, key: str | None = None):
        super().__init__(message)
        self.key = key


class RewardSourceError(TinyRLHFError):
    """The reward source failed (a callable raised, a reward server did not answer after its retries) or returned
    something that is not one finite number per completion."""
