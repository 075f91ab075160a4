"""The ``seglosses`` command line (``pip install "seglosses[cli]"``): ``list`` and ``plot`` so far.

Every user error (an unknown loss, a bad option, a missing file) ends with one line on stderr,
``error: ...``, and exit status 2, never a traceback.
"""

from __future__ import annotations

import sys
from typing import List, NoReturn, Optional

from .._core.errors import SegLossError


def _fail(message: str) -> NoReturn:
    print(f"error: {message.splitlines()[0]}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of the ``seglosses`` command."""
    try:
        from .commands import cli
    except ImportError as error:  # the [cli] extra is missing
        _fail(f"the command line needs the [cli] extra: pip install 'seglosses[cli]' ({error})")
    try:
        cli.main(args=argv, prog_name="seglosses", standalone_mode=False)
    except SegLossError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        print("interrupted: finished runs are saved; run the same command again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as error:  # click's own usage errors
        import click

        if isinstance(error, click.exceptions.Abort):
            raise SystemExit(130) from None
        if isinstance(error, click.ClickException):
            _fail(error.format_message())
        raise
