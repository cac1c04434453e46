"""`BindingSnapshot` and `GraphCache`: when a captured CUDA graph may be replayed.

A CUDA graph bakes in every address and shape its kernels saw. Upstream's `EngineExecutor`
keys captured graphs by a hash of all bindings' addresses and shapes and, on a key hit, compares
the stored snapshot with the current one exactly before `cudaGraphLaunch` (a hash collision
must never replay a graph on the wrong buffers). This module is provider-neutral: it sees only
`(name, address, shape)` triples and an `enqueue(stream)` callable; CUDA calls go through a small
backend object (`CudaRuntimeBackend`, cuda-python imported lazily), so this module imports, and
its key/equality/counter logic runs, on machines without CUDA.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Protocol


@dataclasses.dataclass(frozen=True)
class Binding:
    """One engine binding as a graph sees it: name, device address, shape."""

    name: str
    address: int
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class BindingSnapshot:
    """Every binding of one step, in binding order; equality is exact (order included).

    Attributes:
      bindings: one `Binding` per engine I/O tensor, in the engine's binding order.
    """

    bindings: tuple[Binding, ...]

    @classmethod
    def of(cls, items: Iterable[tuple[str, int, Sequence[int]]]) -> BindingSnapshot:
        """Builds a snapshot from `(name, address, shape)` triples, checking each.

        Raises:
          TypeError, ValueError: on a non-int address or dim, a negative one, or a repeated name.
        """
        bindings, seen = [], set()
        for name, address, shape in items:
            if not isinstance(name, str) or name in seen:
                raise ValueError(
                    f"BindingSnapshot: name={name!r} (expected a unique str per binding); "
                    f"each engine I/O tensor appears once"
                )
            seen.add(name)
            if isinstance(address, bool) or not isinstance(address, int) or address < 0:
                raise TypeError(
                    f"BindingSnapshot: {name}.address={address!r} (expected an int >= 0); pass "
                    f"the device pointer, e.g. __cuda_array_interface__['data'][0]"
                )
            dims = tuple(shape)
            if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in dims):
                raise TypeError(
                    f"BindingSnapshot: {name}.shape={dims!r} (expected non-negative ints); pass "
                    f"the concrete shape of the bound tensor"
                )
            bindings.append(Binding(name, address, dims))
        return cls(tuple(bindings))

    def key(self) -> int:
        """Hash of every binding's address, rank and dims in binding order (names excluded).

        Deterministic across processes (ints only). Equal snapshots have equal keys; equal keys
        do not imply equal snapshots, hence `GraphCache`'s exact comparison.
        """
        return hash(tuple((b.address, len(b.shape), *b.shape) for b in self.bindings))


class GraphBackend(Protocol):
    """The CUDA calls `GraphCache` makes; every method raises `CudaError` on failure."""

    def synchronize(self, stream: int) -> None: ...
    def begin_capture(self, stream: int) -> None: ...
    def end_capture(self, stream: int) -> object: ...
    def abort_capture(self, stream: int) -> None: ...
    def instantiate(self, graph: object) -> object: ...
    def launch(self, graph_exec: object, stream: int) -> None: ...
    def destroy(self, graph_exec: object) -> None: ...
    def clear_error(self) -> str: ...


class CudaError(RuntimeError):
    """A CUDA runtime call failed (its name and error code are in the message)."""


class CudaRuntimeBackend:
    """`GraphBackend` on cuda-python's runtime bindings (`cuda.bindings.runtime`, imported here)."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime
        except ImportError:
            try:
                from cuda import cudart as runtime  # cuda-python < 12.6
            except ImportError as e:
                raise ImportError(
                    "GraphCache needs cuda-python to replay or capture CUDA graphs; "
                    "install it with `pip install cuda-python`"
                ) from e
        self._rt = runtime

    def _check(self, what: str, result: tuple) -> object:
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{what} failed: {err.name} ({int(err)})")
        return values[0] if values else None

    def synchronize(self, stream: int) -> None:
        self._check("cudaStreamSynchronize", self._rt.cudaStreamSynchronize(stream))

    def begin_capture(self, stream: int) -> None:
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check("cudaStreamBeginCapture", self._rt.cudaStreamBeginCapture(stream, mode))

    def end_capture(self, stream: int) -> object:
        return self._check("cudaStreamEndCapture", self._rt.cudaStreamEndCapture(stream))

    def abort_capture(self, stream: int) -> None:
        err, graph = self._rt.cudaStreamEndCapture(stream)
        if err == self._rt.cudaError_t.cudaSuccess and graph is not None:
            self._rt.cudaGraphDestroy(graph)

    def instantiate(self, graph: object) -> object:
        try:
            return self._check("cudaGraphInstantiate", self._rt.cudaGraphInstantiate(graph, 0))
        finally:
            self._rt.cudaGraphDestroy(graph)

    def launch(self, graph_exec: object, stream: int) -> None:
        self._check("cudaGraphLaunch", self._rt.cudaGraphLaunch(graph_exec, stream))

    def destroy(self, graph_exec: object) -> None:
        self._check("cudaGraphExecDestroy", self._rt.cudaGraphExecDestroy(graph_exec))

    def clear_error(self) -> str:
        (err,) = self._rt.cudaGetLastError()
        return err.name


@dataclasses.dataclass(frozen=True)
class GraphCacheStats:
    """Counters of a `GraphCache`; every `execute` is exactly one hit or one miss.

    Attributes:
      hits: replayed a stored graph (`cudaGraphLaunch`).
      misses: ran `enqueue` (no stored graph for this exact snapshot).
      captures: graphs captured and stored (each also counted as a miss).
      capture_failures: captures that failed; the step's work still ran (warm-up enqueue).
    """

    hits: int = 0
    misses: int = 0
    captures: int = 0
    capture_failures: int = 0


@dataclasses.dataclass(frozen=True)
class _Entry:
    snapshot: BindingSnapshot
    graph_exec: object


class GraphCache:
    """Captured CUDA graphs keyed by `BindingSnapshot.key()`, replayed only on an exact match.

    `execute(snapshot, stream, enqueue, capture)`:
      - stored graph for this key whose snapshot equals `snapshot` -> `cudaGraphLaunch` (hit);
      - otherwise (miss) `enqueue(stream)`; with `capture=True` the enqueue is the warm-up run
        (it does this step's work), then the stream is synchronized, one more `enqueue` is
        stream-captured (thread-local mode; captured work does not run) and instantiated for
        later hits. A failed capture clears the CUDA error, counts in `capture_failures`, keeps
        the reason in `last_capture_error`, and marks the snapshot so later calls just enqueue.

    The backend is created on first use, so misses without capture need no CUDA at all.
    Calls are serialized by a lock.
    """

    def __init__(self, backend: GraphBackend | None = None) -> None:
        self._backend = backend
        self._entries: dict[int, _Entry] = {}
        self._failed: set[BindingSnapshot] = set()
        self._stats = GraphCacheStats()
        self._lock = threading.Lock()
        self.last_capture_error: str | None = None

    @property
    def stats(self) -> GraphCacheStats:
        return self._stats

    def __len__(self) -> int:
        return len(self._entries)

    def _cuda(self) -> GraphBackend:
        if self._backend is None:
            self._backend = CudaRuntimeBackend()
        return self._backend

    def _count(self, **inc: int) -> None:
        s = self._stats
        self._stats = dataclasses.replace(s, **{k: getattr(s, k) + v for k, v in inc.items()})

    def lookup(self, snapshot: BindingSnapshot) -> object | None:
        """The graph stored for `snapshot`'s key if its snapshot equals `snapshot` exactly."""
        entry = self._entries.get(snapshot.key())
        return entry.graph_exec if entry is not None and entry.snapshot == snapshot else None

    def _store(self, snapshot: BindingSnapshot, graph_exec: object) -> None:
        """Stores a graph for `snapshot`, replacing (and destroying) a colliding entry."""
        old = self._entries.get(snapshot.key())
        self._entries[snapshot.key()] = _Entry(snapshot, graph_exec)
        if old is not None:
            self._cuda().destroy(old.graph_exec)

    def execute(
        self,
        snapshot: BindingSnapshot,
        stream: int,
        enqueue: Callable[[int], None],
        capture: bool = False,
    ) -> Literal["replay", "enqueue", "capture"]:
        """Runs one step on `stream`; returns what it did (see the class docstring)."""
        with self._lock:
            graph_exec = self.lookup(snapshot)
            if graph_exec is not None:
                self._cuda().launch(graph_exec, stream)
                self._count(hits=1)
                return "replay"
            self._count(misses=1)
            enqueue(stream)  # this step's work (the warm-up run when capturing)
            if not capture or snapshot in self._failed:
                return "enqueue"
            return self._capture(snapshot, stream, enqueue)

    def _capture(
        self, snapshot: BindingSnapshot, stream: int, enqueue: Callable[[int], None]
    ) -> Literal["enqueue", "capture"]:
        cuda = self._cuda()
        try:
            cuda.synchronize(stream)
            cuda.begin_capture(stream)
            try:
                enqueue(stream)
            except Exception:
                cuda.abort_capture(stream)  # leave capture mode before reporting
                raise
            graph = cuda.end_capture(stream)
            graph_exec = cuda.instantiate(graph)
        except Exception as e:  # any failure inside capture means "no graph" for this snapshot
            self.last_capture_error = f"{type(e).__name__}: {e} (cleared {cuda.clear_error()})"
            self._failed.add(snapshot)
            self._count(capture_failures=1)
            return "enqueue"
        self._store(snapshot, graph_exec)
        self._count(captures=1)
        return "capture"

    def clear(self) -> None:
        """Destroys every stored graph; counters are kept."""
        with self._lock:
            entries, self._entries = self._entries, {}
            self._failed.clear()
            for entry in entries.values():
                self._cuda().destroy(entry.graph_exec)
