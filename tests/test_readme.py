"""Every README example runs as written (issue #18, item 4).

The README's ``bash`` and ``python`` blocks run in order, as written, in one temporary
folder (the typical session makes the ``cluster.json`` and ``trace.arrow`` the library
block reads). A block preceded by ``<!-- readme-test: skip: WHY -->`` is not run; only the
install block may be (``.ci/run`` runs exactly that on every change). The command-line
synopsis block is checked against ``--help``: every subcommand and option it shows exists.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastpath.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip:\s*(.+?)\s*-->")


def blocks() -> list[tuple[str, str, str | None]]:
    """(language, text, skip reason or None) of every fenced block, in order."""
    out = []
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP.search(prev)
        j = i + 1
        while not lines[j].startswith("```"):
            j += 1
        out.append((m.group(1), "\n".join(lines[i + 1:j]) + "\n", skip.group(1) if skip else None))
        i = j + 1
    return out


def printed() -> dict[int, str]:
    """{index of a block: the output the README says it prints}: a ``text`` block right after it
    whose introducing sentence says "which prints"."""
    text = README.read_text()
    out = {}
    listed = blocks()
    for k in range(len(listed) - 1):
        lang, body, _ = listed[k]
        nxt_lang, nxt_body, _ = listed[k + 1]
        if lang in ("bash", "python") and nxt_lang == "text":
            between = text.split(body, 1)[1].split(nxt_body, 1)[0]
            if "which prints" in between:
                out[k] = nxt_body
    return out


def test_the_walkthrough_output_is_checked():
    assert any("first full after" in body for body in printed().values())


def test_only_the_install_block_is_skipped():
    skipped = [text for lang, text, why in blocks() if why]
    assert len(skipped) == 1 and "pip install" in skipped[0], skipped
    assert any(lang == "bash" and not why for lang, _, why in blocks())
    assert any(lang == "python" and not why for lang, _, why in blocks())


def _subparser(words: list[str]) -> argparse.ArgumentParser:
    p = build_parser()
    for w in words:
        sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or w not in sub.choices:
            break
        p = sub.choices[w]
    return p


def test_synopsis_matches_the_command_line():
    synopsis = next(text for lang, text, _ in blocks() if not lang and "fastpath replay" in text)
    command: list[str] = []
    for line in synopsis.splitlines():
        if line.startswith("fastpath "):
            words = line.split()[1:]
            command = [w for w in words[:2] if re.fullmatch(r"[a-z]+", w)]
        options = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", line))
        parser = _subparser(command)
        known = {o for a in parser._actions for o in a.option_strings}
        assert options <= known, (line, options - known)


def test_readme_blocks_run_as_written(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=str(ROOT), NO_COLOR="1")
    ran = 0
    listed = blocks()
    for k, (lang, text, why) in enumerate(listed):
        if why or lang not in ("bash", "python"):
            continue
        cmd = ["bash", "-euo", "pipefail", "-c", text] if lang == "bash" else [sys.executable, "-c", text]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"README {lang} block failed:\n{text}\nstdout:\n{done.stdout[-3000:]}\n" \
                                     f"stderr:\n{done.stderr[-3000:]}"
        said = printed().get(k)                    # the output the README says this block prints
        if said is not None:
            assert done.stdout.rstrip().endswith(said.rstrip()), \
                f"README says the block prints\n{said}but it printed\n{done.stdout[-2000:]}"
        ran += 1
    assert ran >= 2
    assert (tmp_path / "results.arrow").exists()
