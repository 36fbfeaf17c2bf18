"""The project's error base: every failure caused by input (files, options, configs, the
machine) is an :class:`AtrousError`; the CLI prints its message and exits with ``exit_code``."""

from __future__ import annotations


class AtrousError(Exception):
    """A failure the user can fix: the message names the file or option and what to do."""

    exit_code = 1


class UsageError(AtrousError):
    """An option or argument that cannot be used as given."""

    exit_code = 2
