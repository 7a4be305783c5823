"""The error users see: one line that names the file, object, column or value at fault."""
from __future__ import annotations


class FastpathError(ValueError):
    """Bad user input: a malformed object, CIDR, address, trace column or file.

    The message is a single line meant to be printed as is (the CLI prints it
    and exits non-zero, without a traceback).
    """
