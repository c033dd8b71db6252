"""The errors a user can fix. Jobs print them as one line ('error: ...') and exit 2; any other
exception is a bug (ours or a library's) and keeps its traceback.

Each names what is wrong and what to change. They live here, below everything else, so that any
module can raise them without importing the config system (no import circles)."""


class UserError(Exception):
    """Bad input a user can fix; the message says what to change."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot work (a flag, a preset, a config file); the message names the flag."""
