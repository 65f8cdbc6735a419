"""User-facing errors: the CLI prints these as one line and exits non-zero, never a traceback."""


class UserError(Exception):
    """Bad input from the user (config, CSV, flag, file). The message names the problem and the fix."""


class ConfigError(UserError):
    """An invalid configuration value; the message names the field, its value and what is valid."""
