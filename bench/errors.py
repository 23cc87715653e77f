"""The error every command reports as bad input: one line, exit code 2 (bench.cli)."""


class ConfigError(ValueError):
    """A bad setting or name; the message says which and what is valid."""
