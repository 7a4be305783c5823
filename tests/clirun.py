"""``fastpath`` run in-process, for the CLI tests."""
from __future__ import annotations

from fastpath.cli import main


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``fastpath ARGV`` in-process: (exit status, stdout, stderr)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse: --help, usage errors
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err
