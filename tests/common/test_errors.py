"""Errors a user fixes by changing an input: IPython shows their message alone, callers catch them as before."""

import pytest
from IPython.core.interactiveshell import InteractiveShell

from tts_lib.common.errors import DataError, MissingInputError, SettingError


def test_notebooks_show_the_message_not_a_traceback(capsys):
    shell = InteractiveShell.instance()
    shell.run_cell("from tts_lib.common.errors import DataError\nraise DataError('data/x: 2 errors; fix them, or ...')")
    shown = capsys.readouterr().out
    assert "DataError" in shown and "data/x: 2 errors; fix them, or ..." in shown
    assert "Traceback" not in shown and "run_cell" not in shown and "<module>" not in shown


@pytest.mark.parametrize(("error", "base"), [(DataError, ValueError), (SettingError, ValueError),
                                             (MissingInputError, FileNotFoundError)])  # fmt: skip
def test_they_are_still_the_usual_exceptions(error, base):
    with pytest.raises(base, match="what to do"):
        raise error("what to do")
