"""Streaming a trace through the data plane in overlapping stages.

:func:`stream` runs a replay's batches through three stages, four with connection tracking:

1. **read** -- the trace reader's iterator (reading, checking and normalizing a
   batch: Arrow and numpy, which release the GIL) on a reader thread;
2. **resolve** -- the data plane on the calling thread, batch after batch in
   trace order, so stateful stages (balancer counters, affinity) see every
   batch once and in order, on one thread;
3. **track** (optional) -- connection tracking over time (its kernel releases
   the GIL) on a thread of its own, batch after batch in trace order: it may
   still drop a resolved flow (a full conntrack table), so it runs before the
   batch is summed up and written;
4. **finish** -- summing up and encoding/writing a resolved batch (the tally
   kernel, Arrow's writers: both release the GIL) on a writer thread.

While batch k is resolved, batch k+1 is read, batch k-1 tracked and batch k-2
written (k-1 without tracking). The queues between the stages hold at most
:data:`DEPTH` batches, and the result buffers are a fixed pool recycled once a
batch is written, so memory stays bounded by a few batches whatever the
trace's length. With ``pipelined=False``
the same steps run one after the other on the calling thread (the reference the
pipelined form is tested against, byte for byte).

An exception in any stage stops the others and is raised on the calling thread
as it was raised (a :class:`~fastpath.errors.FastpathError` stays one line);
``KeyboardInterrupt`` on the calling thread stops the stages too. Either way
the caller's ``except``/``finally`` runs only once every thread has stopped,
so a writer being aborted is never written to at the same time.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable

import numpy as np

from ._jit import jit, read_only

#: Batches waiting between two stages (each queue), and spare result buffers.
DEPTH = 2
#: How often (seconds) a blocked stage looks whether another one failed.
_POLL_S = 0.05
_END = object()


class _Stop(Exception):
    """Raised inside a worker thread when another stage failed: just leave."""


class _Pipe:
    """The shared state of one pipelined run: a stop flag and the first failure."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def fail(self, e: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = e
        self.stop.set()

    def check(self) -> None:
        """On the calling thread: raise a worker's failure."""
        if self.error is not None:
            raise self.error

    def put(self, q: queue.Queue, item: Any, worker: bool) -> None:
        while True:
            if worker and self.stop.is_set():
                raise _Stop
            if not worker:
                self.check()
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def get(self, q: queue.Queue, worker: bool) -> Any:
        while True:
            if worker and self.stop.is_set():
                raise _Stop
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                if not worker:
                    self.check()


def stream(batches: Iterable, resolve: Callable[[Any, Any], Any], finish: Callable[[Any, Any], None], *,
           buffers: Callable[[int], Any] | None = None, size: int = 0, pipelined: bool = True,
           first: Callable[[Any], None] | None = None, resolved: Callable[[int], None] | None = None,
           track: Callable[[Any, Any], None] | None = None) -> int:
    """Read, resolve and finish every batch of ``batches``; return the number of rows.

    Parameters
    ----------
    batches
        Yields batches with a row count ``n`` (:class:`fastpath.traces.Flows`);
        iterated on the reader thread.
    resolve
        ``resolve(flows, out)`` -> results, on the calling thread, in order;
        ``out`` is a recycled buffer of ``size`` rows or ``None`` (make one).
    finish
        ``finish(results, flows)`` on the writer thread, in order; once it returns
        the results buffer may be reused.
    buffers
        ``buffers(size)`` makes a result buffer to recycle; ``None``: never reuse
        one (when ``finish`` keeps the results).
    size
        Rows of a recycled buffer (the batch size); other batches get ``out=None``.
    pipelined
        ``False``: every step on the calling thread, one after the other.
    first
        Called on the calling thread with the first batch before it is resolved
        (the replay compiles its kernels there).
    resolved
        Called on the calling thread with the rows done so far, after each batch.
    track
        ``track(results, flows)`` on a thread of its own, in order, between
        ``resolve`` and ``finish`` (connection tracking: it may change the
        results ``finish`` reads); ``None``: no such stage.
    """
    if not pipelined:
        done = 0
        spare = buffers(size) if buffers is not None and size else None
        for i, flows in enumerate(batches):
            if i == 0 and first is not None:
                first(flows)
            r = resolve(flows, spare if spare is not None and flows.n == size else None)
            if track is not None:
                track(r, flows)
            finish(r, flows)
            done += flows.n
            if resolved is not None:
                resolved(done)
        return done

    pipe = _Pipe()
    inbox: queue.Queue = queue.Queue(maxsize=DEPTH)
    outbox: queue.Queue = queue.Queue(maxsize=DEPTH)
    tracked: queue.Queue = queue.Queue(maxsize=DEPTH) if track is not None else outbox
    free: queue.Queue = queue.Queue()
    if buffers is not None and size:
        for _ in range(DEPTH + (4 if track is not None else 2)):
            free.put(buffers(size))

    def read() -> None:
        try:
            for flows in batches:
                pipe.put(inbox, flows, worker=True)
            pipe.put(inbox, _END, worker=True)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001 -- handed to the calling thread
            pipe.fail(e)

    def follow() -> None:
        try:
            while True:
                item = pipe.get(outbox, worker=True)
                if item is not _END:
                    track(item[0], item[1])
                pipe.put(tracked, item, worker=True)
                if item is _END:
                    return
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001
            pipe.fail(e)

    def write() -> None:
        try:
            while True:
                item = pipe.get(tracked, worker=True)
                if item is _END:
                    return
                r, flows, recycled = item
                finish(r, flows)
                if recycled:
                    free.put(r)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001
            pipe.fail(e)

    threads = [threading.Thread(target=read, name="fastpath-read", daemon=True)]
    if track is not None:
        threads.append(threading.Thread(target=follow, name="fastpath-track", daemon=True))
    threads.append(threading.Thread(target=write, name="fastpath-write", daemon=True))
    for t in threads:
        t.start()
    done = 0
    try:
        while True:
            flows = pipe.get(inbox, worker=False)
            if flows is _END:
                break
            if done == 0 and first is not None:
                first(flows)
            recycle = buffers is not None and size and flows.n == size
            out = pipe.get(free, worker=False) if recycle else None
            r = resolve(flows, out)
            pipe.put(outbox, (r, flows, bool(recycle)), worker=False)
            done += flows.n
            if resolved is not None:
                resolved(done)
        pipe.put(outbox, _END, worker=False)
        while threads[-1].is_alive():                # the writer: the last stage, done last
            threads[-1].join(_POLL_S)
            pipe.check()
        pipe.check()
    except BaseException:
        pipe.stop.set()
        raise
    finally:
        for t in threads:
            while t.is_alive():
                t.join(_POLL_S)
    return done


# --------------------------------------------------------------------------- tallies

#: An empty read-only uint64 column: "the trace has no bytes".
NO_BYTES = read_only(np.zeros(0, np.uint64))
#: An empty read-only uint32 column: "the trace has no packets".
NO_PACKETS = read_only(np.zeros(0, np.uint32))


@jit
def tally_batch(verdict, path, service, dst_pod, nbytes, npackets, by_verdict, by_path, by_service, service_bytes,
                service_packets, pairs, pod_slots, keys):
    """Count one batch of results into running totals, in one pass.

    ``by_verdict``/``by_path``: flows per code; ``by_service``/``service_bytes``/
    ``service_packets``: flows, bytes and packets per service slot (service index + 1,
    slot 0: none; bytes and packets only where ``nbytes``/``npackets`` have a row per
    flow); ``pairs``: flows per (service
    slot, pod slot) key ``slot * pod_slots + dst_pod + 1`` when it is a dense
    array, else (``pairs`` empty) those keys are written to ``keys`` and their
    count returned, for the caller to count sparsely. Only flows to a service
    get a key. Codes beyond the count arrays are not counted.
    """
    n = verdict.shape[0]
    dense = pairs.shape[0] > 0
    weigh = nbytes.shape[0] == n
    count_packets = npackets.shape[0] == n
    nv = by_verdict.shape[0]
    npath = by_path.shape[0]
    k = 0
    for i in range(n):
        v = verdict[i]
        if v < nv:
            by_verdict[v] += 1
        p = path[i]
        if p < npath:
            by_path[p] += 1
        s = np.int64(service[i]) + 1
        if s >= by_service.shape[0]:
            continue
        by_service[s] += 1
        if weigh:
            service_bytes[s] += nbytes[i]
        if count_packets:
            service_packets[s] += np.uint64(npackets[i])
        if s > 0:
            key = s * pod_slots + (np.int64(dst_pod[i]) + 1)
            if dense:
                if key < pairs.shape[0]:
                    pairs[key] += 1
            else:
                keys[k] = key
                k += 1
    return k
