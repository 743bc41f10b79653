"""Errors that are the user's to fix: the CLI prints their message, without a traceback unless --debug."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (config, data, checkpoint, image), with a message that says the fix."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work: names the key and the reason."""


def require(ok: bool, key: str, rule: str, value: object) -> None:
    """ConfigError "<key> must <rule>, got <value>" unless `ok`."""
    if not ok:
        raise ConfigError(f"{key} must {rule}, got {value!r}")


class CheckpointError(UserError, ValueError):
    """A checkpoint or model file that cannot be loaded (or is refused as unsafe)."""


class BadDataError(UserError, ValueError):
    """Too many unreadable files in a dataset: names them and the setting that tolerates more."""
