"""The ``seglosses`` command line (``pip install "seglosses[cli]"``): ``list`` and ``plot`` so far.

Every user error (an unknown loss, a bad option, a missing file) and every file-system error (a full disk,
an unwritable output folder) ends with one line on stderr, ``error: ...``, and exit status 2, never a
traceback.
"""

from __future__ import annotations

import sys
from typing import List, NoReturn, Optional

from .._core.errors import SegLossError, summary

# What str.splitlines breaks at: written as escapes, so that a message stays one line whatever it names.
_LINE_BREAKS = {ord(c): c.encode("unicode_escape").decode("ascii")
                for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}  # fmt: skip


def one_line(message: str) -> str:
    """``message`` on one line: line breaks inside it (a path with a newline) written as escapes (``\\n``)."""
    return message.strip().translate(_LINE_BREAKS)


def _fail(message: str) -> NoReturn:
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(2)


def _file_system_message(error: OSError, argv: List[str]) -> str:
    """``No space left on device [errno 28]: PATH``; where the error names no file (a failed write to an
    open file), the ``--out`` folder of the command instead."""
    reason = error.strerror or str(error) or type(error).__name__
    code = f" [errno {error.errno}]" if error.errno else ""
    where = error.filename
    if where is None:
        for k, arg in enumerate(argv):
            if arg == "--out" and k + 1 < len(argv):
                where = f"writing into --out {argv[k + 1]}"
            elif arg.startswith("--out="):
                where = f"writing into --out {arg[len('--out=') :]}"
    return f"{reason}{code}" + (f": {where}" if where is not None else "")


def _interrupted() -> NoReturn:
    print("interrupted: finished runs are saved; run the same command again to resume", file=sys.stderr)
    raise SystemExit(130) from None


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of the ``seglosses`` command."""
    try:
        from .commands import cli
    except ImportError as error:  # the [cli] extra is missing
        _fail(f"the command line needs the [cli] extra: pip install 'seglosses[cli]' ({error})")
    try:
        cli.main(args=argv, prog_name="seglosses", standalone_mode=False)
    except SegLossError as error:
        _fail(summary(error))  # without its illustration (a spec's caret line)
    except OSError as error:  # a full disk, an unwritable folder, a file that went away: no traceback
        _fail(_file_system_message(error, sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        _interrupted()
    except Exception as error:  # click's own usage errors
        import click

        if isinstance(error, click.exceptions.Abort):  # click's form of Ctrl-C
            _interrupted()
        if isinstance(error, click.ClickException):
            _fail(error.format_message())
        raise
