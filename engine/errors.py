"""The project's own error classes: problems the user can fix.

Each message says which file or option, what is wrong and what to do. `msdm`
prints a `UserError` in one line (exit status 2) and the OSC server answers it
with an error code; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


class CommandError(UserError):
    """A command line (or request) that cannot be run as given: a bad flag value, a missing option."""


class InputError(UserError, ValueError):
    """An input the user gave that cannot be used: a file, a stem name, a length."""


class ModelFileError(UserError, ValueError):
    """A model file that is missing, of another format, or inconsistent."""


class OutputError(UserError):
    """An output that cannot go where asked: a folder that cannot be made or
    written, a folder or the input itself in a file's place, an output folder
    moved or replaced while the job ran. Nothing of the user's was changed."""


class DiskFullError(OutputError):
    """The file system ran out of space (or of the user's quota) while writing:
    the temp files were removed and nothing of the user's was changed."""
