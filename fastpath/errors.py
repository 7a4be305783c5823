"""The error users see: one line that names the file, object, column or value at fault."""
from __future__ import annotations


class FastpathError(ValueError):
    """Bad user input: a malformed object, CIDR, address, trace column or file.

    The message is a single line meant to be printed as is (the CLI prints it
    and exits non-zero, without a traceback).
    """


#: Longest run of non-blank characters (a name, a value) an error line quotes whole;
#: longer ones are cut, with the count of characters left out.
NAME_LIMIT = 200
#: Longest error line printed (characters).
LINE_LIMIT = 2000


class Interrupted(BaseException):
    """A signal (SIGINT, SIGTERM, SIGHUP) ended the run.

    A ``BaseException`` like ``KeyboardInterrupt``, so ``except Exception``
    blocks let it through while ``finally`` and ``except BaseException``
    cleanups (temporary results files) still run. The CLI turns it into one
    line and exit status ``128 + signo``.
    """

    def __init__(self, signo: int, name: str) -> None:
        super().__init__(f"interrupted by {name}")
        self.signo = signo
        self.name = name


def shorten(text: object, limit: int = NAME_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out (for names in messages)."""
    s = text if isinstance(text, str) else str(text)
    if len(s) <= limit:
        return s
    return f"{s[:limit]}…(+{len(s) - limit:,} characters)"


def one_line(message: object) -> str:
    """An error message as one printable line: control characters escaped, long names cut.

    Every run of non-blank characters over :data:`NAME_LIMIT` is cut (a 1 MB pod
    name does not make a 1 MB line), and the line to :data:`LINE_LIMIT`.
    """
    import re

    s = message if isinstance(message, str) else str(message)
    if len(s) > 1 << 24:  # never run the passes below over more than 16 MB
        s = s[:1 << 23] + " … " + s[-LINE_LIMIT:]
    s = re.sub(r"[\x00-\x1f\x7f\u2028\u2029\x85]", lambda m: repr(m.group())[1:-1], s)
    s = re.sub(r"\S{%d,}" % (NAME_LIMIT + 1), lambda m: shorten(m.group()), s)
    return shorten(s, LINE_LIMIT) if len(s) > LINE_LIMIT else s
