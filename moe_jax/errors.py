"""User-facing errors and warnings: the CLI prints each as one line on stderr, never a traceback."""

import sys


class UserError(Exception):
    """Bad input from the user (config, CSV, flag, file). The message names the problem and the fix."""


class ConfigError(UserError):
    """An invalid configuration value; the message names the field, its value and what is valid."""


def warn(command: str, message: str) -> None:
    """Print a one-line warning of `moe-jax command` on stderr (the answer is still given, exit code 0)."""
    print(f"moe-jax {command}: warning: {message}", file=sys.stderr, flush=True)
