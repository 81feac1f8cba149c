"""One root exception; subclasses say what failed."""

from __future__ import annotations


class NicreconciledError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(NicreconciledError):
    """The configuration file or command line is wrong (exit code 2)."""


class FetchError(NicreconciledError):
    """The metadata service did not give a usable answer (timeout, 5xx, reset, 401, empty).

    A fetch error is never the same thing as "absent": nothing rendered changes because of it.
    """


class MetadataError(NicreconciledError):
    """The metadata service answered, but with data that fails validation."""


class UnsafePathError(NicreconciledError):
    """A path under output_dir is not a regular file we own (symlink, directory, ...)."""


class ApplyError(NicreconciledError):
    """Loading a change into the network stack failed (logged and retried, never fatal)."""
