"""User-facing error types.

Every mistake a user can make (bad YAML, unknown keys, missing files, bad URIs, corrupt data)
raises a subclass of :class:`ClsactError`. The CLI prints its message as one line and exits
with :data:`clsact.exitcodes.USER_ERROR`; anything else is a bug and keeps its traceback.
"""


class ClsactError(Exception):
    """A problem the user can fix; the message names the culprit and the fix."""


class ConfigError(ClsactError):
    """The compression config (file, key or value) is invalid."""


class DataError(ClsactError):
    """The dataset (list files, images) is invalid or unreadable."""


class ModelError(ClsactError):
    """The input model is missing, unreadable or unsuitable."""


class StorageError(ClsactError):
    """A path or URI cannot be read from or written to."""


class DeviceError(ClsactError):
    """The requested device (GPU) is not available."""


class DistributedError(ClsactError):
    """The multi-process environment is incomplete or inconsistent."""
