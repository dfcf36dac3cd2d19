"""Errors whose message is the whole story: a notebook shows the message, not a traceback.

    from tts_lib.common.errors import DataError
    raise DataError("data/my_set: 3 errors (listed above); fix them, or ...")

IPython (JupyterLab, papermill) renders an exception through its `_render_traceback_` when it has one:
a bad dataset path or a dataset with errors then ends the notebook with one readable line that names
the fix, instead of 25 lines of library frames. Run All still stops there, and the command line still
gets an ordinary exception (FileNotFoundError / ValueError), so callers catch them as before.
"""

from __future__ import annotations

RED, RESET = "\x1b[31m", "\x1b[0m"  # IPython shows ANSI colours in tracebacks


class UserError(Exception):
    """Something the user can fix by changing an input; the message says what and how."""

    def _render_traceback_(self) -> list[str]:
        return [f"{RED}{type(self).__name__}{RESET}: {line}" if i == 0 else line
                for i, line in enumerate(str(self).splitlines() or [""])]  # fmt: skip


class DataError(UserError, ValueError):
    """The dataset cannot be trained on as it is."""


class MissingInputError(UserError, FileNotFoundError):
    """A dataset, model or folder that was named does not exist (or is not what it should be)."""


class SettingError(UserError, ValueError):
    """A setting (notebook parameter, flag, launch parameter) has a value it cannot take."""
