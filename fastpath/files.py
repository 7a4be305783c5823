"""Files in and out, guarded: what fastpath refuses to read or to overwrite.

Inputs (cluster, trace, events) must be regular files or directories: a FIFO,
a device or a socket is refused before it is opened (opening a FIFO blocks,
``/dev/zero`` never ends), a symlink loop is named as one, and a cluster file
larger than :data:`MAX_INPUT_BYTES` is refused before it is read. Outputs
(results, summary JSON, synthetic files) are checked before any work starts:
never an input (through symlinks and hard links too), never inside an input
directory, never a directory or a device, in a folder that exists and can be
written. :func:`atomic_write_text` writes a small output whole or not at all.
The limits are listed in ``docs/limits.md``.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable

from .errors import FastpathError

#: Largest cluster file read (2 GiB); ``FASTPATH_MAX_INPUT_BYTES`` overrides it.
MAX_INPUT_BYTES = 2 << 30
#: Bytes a flow takes in a trace file fastpath writes, by format (measured on synthetic
#: traces: 37.3 in Arrow IPC, 16 in Parquet; the Parquet figure is kept low, as its
#: compression varies), for the free-space check before writing.
TRACE_BYTES_PER_FLOW = {"arrow": 37, "parquet": 8}
#: Bytes a results row takes (measured: 35 in Arrow IPC, 7 in Parquet), likewise.
RESULT_BYTES_PER_ROW = {"arrow": 34, "parquet": 4}
#: What each non-regular file type is called in messages.
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def max_input_bytes() -> int:
    """The cluster file size limit in force (:data:`MAX_INPUT_BYTES` or ``$FASTPATH_MAX_INPUT_BYTES``)."""
    text = os.environ.get("FASTPATH_MAX_INPUT_BYTES", "")
    try:
        return int(text) if text.strip() else MAX_INPUT_BYTES
    except ValueError:
        raise FastpathError(f"FASTPATH_MAX_INPUT_BYTES={text!r} is not a whole number of bytes") from None


def _kind_of(mode: int) -> str | None:
    for test, name in _KINDS:
        if test(mode):
            return name
    return None if (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) else "not a regular file"


def _stat_error(path: Path, what: str, e: OSError) -> FastpathError:
    """One line for an ``os.stat`` failure: a symlink loop or a broken symlink named as such."""
    if e.errno == errno.ELOOP:
        return FastpathError(f"{path}: symlink loop (the {what} path's links point back at each other)")
    if e.errno == errno.ENOENT:
        try:
            if path.is_symlink():
                return FastpathError(f"{path}: broken symlink to {os.readlink(path)} (no such {what} file)")
        except OSError:
            pass
        return FastpathError(f"{path}: no such {what} file or directory")
    if e.errno == errno.ENOTDIR:
        return FastpathError(f"{path}: no such {what} file (a folder in the path is a file)")
    return FastpathError(f"{path}: cannot open {what} ({e.strerror or e})")


def input_stat(path: str | os.PathLike, what: str = "input") -> os.stat_result:
    """``os.stat`` of an input that must be a regular file or a directory (symlinks followed).

    Raises
    ------
    FastpathError
        The path does not exist, is a symlink loop or a broken symlink, or is a
        FIFO, device or socket; one line naming the path and ``what`` it is.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise _stat_error(p, what, e) from None
    except ValueError as e:  # an embedded NUL byte
        raise FastpathError(f"{what} path {str(p)!r}: {e}") from None
    kind = _kind_of(st.st_mode)
    if kind is not None:
        raise FastpathError(f"{p}: the {what} is {kind}; give a regular file or a directory")
    return st


def read_input(path: str | os.PathLike, what: str = "cluster", limit: int | None = None) -> bytes:
    """The bytes of a regular input file, refusing anything else and anything over ``limit``.

    The file is opened non-blocking and checked with ``fstat`` before a byte is
    read, so a FIFO or a device slipped in after :func:`input_stat` is still
    refused, and at most ``limit + 1`` bytes are ever read.

    Parameters
    ----------
    limit
        Largest size in bytes (default :func:`max_input_bytes`).
    """
    p = Path(path)
    limit = max_input_bytes() if limit is None else limit
    input_stat(p, what)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _stat_error(p, what, e) from None
    try:
        st = os.fstat(fd)
        kind = _kind_of(st.st_mode)
        if kind is not None or stat.S_ISDIR(st.st_mode):
            raise FastpathError(f"{p}: the {what} is {kind or 'a directory'}; give a regular file")
        if st.st_size > limit:
            raise FastpathError(f"{p}: {what} file is {st.st_size:,} bytes, over the {limit:,}-byte limit "
                                f"(set FASTPATH_MAX_INPUT_BYTES to raise it; see docs/limits.md)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as fh:
            fd = -1
            data = fh.read(limit + 1)
    except OSError as e:
        raise FastpathError(f"{p}: cannot read {what} ({e.strerror or e})") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > limit:  # grew while being read
        raise FastpathError(f"{p}: {what} file is over the {limit:,}-byte limit (see docs/limits.md)")
    return data


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare as written
        return Path(os.path.abspath(path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return _resolved(a) == _resolved(b)


def _inside(path: Path, folder: Path) -> bool:
    try:
        _resolved(path).relative_to(_resolved(folder))
        return True
    except ValueError:
        return False


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """Check that ``path`` can be written as a new or replaced regular file; return it.

    Raises
    ------
    FastpathError
        The path is a directory, a device, FIFO or socket; its folder does not
        exist or is not a folder; or the folder cannot be written. The message
        names the path the user gave.
    """
    p = Path(path)
    if not p.name or p.name in (".", ".."):
        raise FastpathError(f"{p}: the {what} must be a file name, not a folder")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FastpathError(f"{p}: symlink loop; cannot write the {what} there") from None
        if e.errno != errno.ENOTDIR:
            raise FastpathError(f"{p}: cannot write the {what} ({e.strerror or e})") from None
        st = None
    except ValueError as e:
        raise FastpathError(f"{what} path {str(p)!r}: {e}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise FastpathError(f"{p}: is a directory; give a file name for the {what}")
        kind = _kind_of(st.st_mode)
        if kind is not None:
            raise FastpathError(f"{p}: is {kind}; the {what} is written as a regular file")
    folder = p.parent
    if not folder.exists():
        raise FastpathError(f"{p}: folder {folder} does not exist (create it first)")
    if not folder.is_dir():
        raise FastpathError(f"{p}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FastpathError(f"{p}: cannot write the {what} in folder {folder} (permission denied)")
    return p


def check_outputs(outputs: Iterable[tuple[str, str | os.PathLike | None]],
                  inputs: Iterable[tuple[str, str | os.PathLike | None]]) -> None:
    """Check every output (``(what, path)``; ``None`` and ``-`` skipped) before any work starts.

    Each output must pass :func:`check_output`, must not be any input file
    (compared through symlinks and hard links), must not lie inside an input
    directory, and no two outputs may be the same file.

    Raises
    ------
    FastpathError
        One line naming the output path and the input it would overwrite.
    """
    ins = [(w, Path(p)) for w, p in inputs if p is not None]
    seen: list[tuple[str, Path]] = []
    for what, path in outputs:
        if path is None or str(path) == "-":
            continue
        out = check_output(path, what)
        for in_what, src in ins:
            if _same_file(out, src):
                raise FastpathError(f"{out}: the {what} would overwrite the {in_what} input {src}; "
                                    f"choose another name")
            if src.is_dir() and _inside(out, src):
                raise FastpathError(f"{out}: the {what} would be written inside the {in_what} directory {src} "
                                    f"(read as {in_what} input next time); choose another folder")
        for other_what, other in seen:
            if _same_file(out, other):
                raise FastpathError(f"{out}: given as both the {other_what} and the {what}")
        seen.append((what, out))


def check_output_folder(folder: str | os.PathLike, names: Iterable[str],
                        inputs: Iterable[tuple[str, str | os.PathLike | None]], what: str = "output folder") -> None:
    """Check, before any work, a folder that files ``names`` will be written into (made if missing).

    The folder must not be an input directory or lie inside one (a study's
    ``figures.json`` in a support bundle is read as a cluster file next time), and
    none of ``folder/name`` may be an input file.

    Raises
    ------
    FastpathError
        One line naming the folder and the input.
    """
    out = Path(folder)
    for in_what, src in ((w, Path(p)) for w, p in inputs if p is not None):
        if src.is_dir() and _inside(out, src):
            raise FastpathError(f"{out}: the {what} would be inside the {in_what} directory {src} "
                                f"(read as {in_what} input next time); choose another folder")
        for name in names:
            if _same_file(out / name, src):
                raise FastpathError(f"{out}: the {what}'s {name} would overwrite the {in_what} input {src}; "
                                    f"choose another folder")


def check_free_space(path: str | os.PathLike, need: int, what: str = "output") -> None:
    """Refuse to start writing about ``need`` bytes to ``path`` where its folder's file system lacks them.

    Raises
    ------
    FastpathError
        Naming the path, the estimate and the free space.
    """
    p = Path(path)
    try:
        free = shutil.disk_usage(p.parent if str(p.parent) else ".").free
    except OSError:
        return  # cannot tell: the write itself reports a full disk
    if need > free:
        raise FastpathError(f"{p}: the {what} needs about {_size(need)} and its folder {_resolved(p.parent)} "
                            f"has {_size(free)} free")


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} PiB"  # pragma: no cover


def write_error(path: str | os.PathLike, what: str, e: BaseException) -> FastpathError:
    """One line for a failed write, naming the user's ``path`` (never the temporary file)."""
    if isinstance(e, OSError) and e.strerror:
        why = e.strerror
    else:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        tmp = getattr(e, "filename", None)
        if tmp:
            why = why.replace(str(tmp), str(path))
    return FastpathError(f"{path}: cannot write the {what} ({why}); nothing written")


#: Temporary files this process made beside an output and has not yet renamed over it or removed
#: (:func:`temp_beside`). A signal can land between making one and the code that would remove it;
#: the command line removes what is left when a signal or an error ends the run (:func:`remove_temps`).
_TEMPS: set[str] = set()


def temp_beside(path: str | os.PathLike) -> tuple[int, Path]:
    """A new, empty file beside ``path`` (``.NAME.XXXXXXXX.tmp``, mode 0666 less the umask), open for
    writing: ``(fd, its path)``. It stays registered for :func:`remove_temps` until :func:`temp_done`.

    The name is registered before the file is made, so no moment exists when the file is there and
    nothing would remove it. Raises ``OSError`` as ``os.open`` does.
    """
    import secrets

    p = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = p.parent / f".{p.name}.{secrets.token_hex(4)}.tmp"
        _TEMPS.add(str(tmp))
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:               # another process's: leave it, draw again
            _TEMPS.discard(str(tmp))
            continue
        except BaseException:                 # failed, or a signal just after it was made: ours to remove
            tmp.unlink(missing_ok=True)
            _TEMPS.discard(str(tmp))
            raise
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(p))


def temp_done(tmp: str | os.PathLike) -> None:
    """``tmp`` (from :func:`temp_beside`) was renamed over its output or removed."""
    _TEMPS.discard(str(tmp))


def remove_temps() -> None:
    """Remove every temporary file :func:`temp_beside` made that is still registered (the command
    line's last step, so a signal or an error leaves no ``.tmp`` file behind)."""
    for t in list(_TEMPS):
        try:
            os.unlink(t)
        except OSError:
            pass
        _TEMPS.discard(t)


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "output") -> Path:
    """Write ``text`` to ``path`` whole or not at all (a temporary file beside it, then a rename).

    Any error, or a signal turned into :class:`~fastpath.errors.Interrupted`,
    removes the temporary file. Errors name ``path``.
    """
    p = Path(path)
    check_output(p, what)
    try:
        fd, tmp = temp_beside(p)
    except OSError as e:
        raise write_error(p, what, e) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(p, what, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        temp_done(tmp)
    return p
