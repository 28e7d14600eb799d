"""The bad-input catalogue's assertions (the fixtures are in conftest.py).

Import them as ``from catalogue import assert_clean_error``: pytest puts this
folder on ``sys.path``, and the name is unique in the test tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The CLI's exit statuses (digits.cli.exit_status): each case names the one it
# expects.
USAGE = 2  # bad usage: argparse's errors, an invalid option value (ConfigError)
FAILURE = 1  # the command could not be carried out: any other error

_ERROR_LINE = re.compile(r"digits[\w ]*: (\w+ )?error")


@dataclass
class CliResult:
    """What one in-process ``digits`` command did: exit status, stdout, stderr."""

    code: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one-line message on stderr, checked clean: ``digits: error: ...``
        (or argparse's ``digits train: error: ...`` after its usage line)."""
        assert "Traceback" not in self.err, self.err
        lines = [line for line in self.err.splitlines() if line.strip()]
        errors = [line for line in lines if _ERROR_LINE.match(line)]
        assert len(errors) == 1, self.err
        return errors[0]


def assert_clean_error(result: CliResult, *fragments: str, code: int) -> str:
    """``result`` failed with exit ``code`` (``USAGE`` or ``FAILURE``) and one
    clear line naming ``fragments``.

    Returns the line. Fragments are matched case-insensitively.
    """
    assert result.code == code, (result.code, result.err)
    line = result.error_line()
    for fragment in fragments:
        assert fragment.lower() in line.lower(), (fragment, line)
    return line
