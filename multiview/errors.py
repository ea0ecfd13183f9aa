"""User-facing errors: one clear line that names the file and what to try.

The CLI prints ``str(error)`` and exits non-zero; a traceback only appears with ``--debug``.
Anything else that escapes is a bug.
"""


class Orbit4dError(Exception):
    """Base of every error the CLI reports as a single line."""


class InputError(Orbit4dError):
    """The input is missing, unreadable, of the wrong kind, or too small to work with."""


class SfmError(Orbit4dError):
    """Structure from motion could not pose the input."""


class OutputError(Orbit4dError):
    """The output cannot be written where asked: it would replace something, or the folder is not writable."""


class OutputExistsError(OutputError):
    """The output folder exists and ``--overwrite`` was not given (or it is or holds an input)."""


class OutputBusyError(OutputError):
    """Another run is writing the same output right now (``multiview.outputs.output_lock``)."""
