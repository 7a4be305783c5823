"""Cluster events: the ``--events`` file, read, checked and parsed up front.

A Kubernetes watch stream as ``kubectl get --watch --output-watch-events -o json``
prints it, one JSON object a line, each with a ``"ts"`` saying when it takes effect
(``docs/events.md``). :func:`read_events` reads the whole file before the replay
starts: every line is checked and every object validated by the cluster loader
(:func:`fastpath.cluster.load.cluster_from_objects`), so a bad line stops the run
before any result is written, with one line naming the file and line. Events with
the same ``ts`` form a group; the replay applies one group at a time.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .errors import FastpathError, shorten

#: Kinds an event may carry (what the cluster loader reads).
EVENT_KINDS = ("Node", "Pod", "Service", "EndpointSlice", "Endpoints", "Namespace", "NetworkPolicy")
#: Watch event types that change the cluster.
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED")
_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")


@dataclass
class Event:
    """One watch event: what happened to which object, and when."""

    type: str            #: ADDED, MODIFIED or DELETED
    kind: str            #: one of :data:`EVENT_KINDS`
    namespace: str       #: "" for cluster-scoped kinds (Node, Namespace)
    name: str
    ts: int              #: nanoseconds since the epoch
    line: int            #: line number in the events file (1-based)
    obj: dict = field(repr=False)   #: the object as given

    @property
    def key(self) -> tuple[str, str, str]:
        """``(kind, namespace, name)``: the object's identity."""
        return (self.kind, self.namespace, self.name)

    @property
    def label(self) -> str:
        """``TYPE Kind`` (how the summary counts events)."""
        return f"{self.type} {self.kind}"


@dataclass
class EventLog:
    """Every event of a file, in time order, grouped by ``ts``."""

    source: str
    events: list[Event]
    #: Notes said once (skipped kinds, bookmarks).
    warnings: list[str] = field(default_factory=list)

    @property
    def groups(self) -> list[list[Event]]:
        """The events, one list per distinct ``ts``, in time order."""
        out: list[list[Event]] = []
        for e in self.events:
            if out and out[-1][0].ts == e.ts:
                out[-1].append(e)
            else:
                out.append([e])
        return out

    def __len__(self) -> int:
        return len(self.events)


def parse_ts(value, where: str) -> int:
    """``ts`` as nanoseconds: an integer, or an RFC 3339 string (up to nanosecond fractions)."""
    if isinstance(value, bool):
        raise FastpathError(f"{where}: \"ts\" must be integer nanoseconds or an RFC 3339 time, got {value!r}")
    if isinstance(value, int):
        if value < 0 or value >= 1 << 63:
            raise FastpathError(f"{where}: \"ts\" {value} is out of range (0 .. 2^63-1 ns)")
        return value
    if isinstance(value, str):
        m = _RFC3339.match(value.strip())
        if m:
            day, hh, mm, ss, frac, zone = m.groups()
            try:
                zone = "+00:00" if zone in ("Z", "z") else zone
                t = datetime.fromisoformat(f"{day}T{hh}:{mm}:{ss}{zone}").astimezone(timezone.utc)
            except ValueError:
                pass
            else:
                seconds = int((t - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds())
                if seconds >= 0:
                    return seconds * 1_000_000_000 + int((frac or "0").ljust(9, "0"))
    raise FastpathError(f"{where}: \"ts\" must be integer nanoseconds or an RFC 3339 time "
                        f"(2026-01-02T03:04:05.5Z), got {shorten(repr(value))}")


def read_events(path: str | os.PathLike) -> EventLog:
    """Read, check and order an events file (``docs/events.md``).

    Raises :class:`~fastpath.errors.FastpathError` naming the file and line for a
    line that is not JSON, lacks ``type``/``ts``/``object``, goes back in time, or
    holds an object the cluster loader refuses.
    """
    from .files import read_input

    p = Path(path)
    data = read_input(p, "events")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FastpathError(f"{p}: not UTF-8 text (bad byte at offset {e.start})") from None
    return events_from_lines(text.splitlines(), str(p))


def events_from_lines(lines, source: str = "<events>") -> EventLog:
    """:func:`read_events` over lines of text or already-parsed dicts (the library's ``events=`` list)."""
    events: list[Event] = []
    skipped: dict[str, int] = {}
    bookmarks = 0
    last = -1
    for n, line in enumerate(lines, 1):
        where = f"{source} line {n}"
        if isinstance(line, str):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                msg = e.msg.removesuffix(" at")      # json's "Unterminated string starting at"
                tail = "; the line ends early (cut short?)" if e.pos >= len(line.rstrip()) or \
                    msg.startswith("Unterminated") else ""
                raise FastpathError(f"{where}: not JSON ({msg} at column {e.colno}){tail}") from None
        else:
            rec = line
        if not isinstance(rec, dict):
            raise FastpathError(f"{where}: expected a watch event object, found {type(rec).__name__}")
        etype = rec.get("type")
        if etype == "BOOKMARK":
            bookmarks += 1
            continue
        if etype == "ERROR":
            raise FastpathError(f"{where}: the watch stream reported an error: {shorten(json.dumps(rec.get('object')))}")
        if etype not in EVENT_TYPES:
            raise FastpathError(f"{where}: \"type\" must be one of {', '.join(EVENT_TYPES)}, got {shorten(repr(etype))}")
        if "ts" not in rec:
            raise FastpathError(f"{where}: no \"ts\" (when the event takes effect: integer ns or RFC 3339)")
        ts = parse_ts(rec["ts"], where)
        if ts < last:
            raise FastpathError(f"{where}: \"ts\" goes back in time ({ts} after {last}): events must be in time order")
        last = ts
        obj = rec.get("object")
        if not isinstance(obj, dict):
            raise FastpathError(f"{where}: no \"object\" (the Kubernetes object the event is about)")
        kind = obj.get("kind")
        if not isinstance(kind, str) or not kind:
            raise FastpathError(f"{where}: the object has no kind")
        if kind not in EVENT_KINDS:
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            raise FastpathError(f"{where}: {kind} without metadata.name")
        ns = "" if kind in ("Node", "Namespace") else (meta.get("namespace") or "default")
        if not isinstance(ns, str):
            raise FastpathError(f"{where}: {kind} {name}: metadata.namespace must be a string")
        events.append(Event(etype, kind, ns, name, ts, n, obj))
    warnings = []
    if skipped:
        kinds = ", ".join(f"{k} ({v})" for k, v in sorted(skipped.items()))
        warnings.append(f"{source}: skipped events of kinds fastpath does not model: {kinds}")
    if bookmarks:
        warnings.append(f"{source}: skipped {bookmarks} BOOKMARK event{'s' * (bookmarks != 1)}")
    return EventLog(source, events, warnings)
