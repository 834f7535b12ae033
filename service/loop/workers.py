"""The camera loop's workers: the frame processor in a thread, or in a child process.

Segmentation holds the GIL for most of its time, so worker threads alone saturate
near one core; each worker thread therefore drives a child process of its own.

Frames and results cross to and from a child through two shared-memory blocks the
parent owns (:class:`SharedBlock`), not through the pipe: a 1280x1024 frame is
1.3 MB and its maps, labels and crops about as much again, which through a 64 KB
pipe cost both processes tens of system calls and three copies each way. Each
message is pickled with protocol 5, its arrays' buffers laid out in the block and
only the small pickle sent over the pipe; the child reads the frame in place, and
the parent copies the result's buffers out before the next frame overwrites them.
A payload larger than its block goes over the pipe as before, and the block grows
for the next one.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any, Protocol

import numpy as np

from acquisition.backend import BackendName
from acquisition.frames import CropGeometry, FrameProcessor, ProcessedFrames
from acquisition.reconstruction import ReconstructionConfig
from acquisition.segmentation import SegmentationConfig

#: How long a child process gets to finish its frame and exit at close.
CLOSE_TIMEOUT_S = 5.0
#: The blocks' first size, bytes (a block grows to fit the largest payload seen).
BLOCK_BYTES = 4 << 20


class WorkerDied(RuntimeError):
    """A worker process ended; a new one takes the next frame."""


@dataclass(frozen=True)
class WorkerConfig:
    """How each worker builds its :class:`FrameProcessor`.

    Attributes
    ----------
    reconstruction, segmentation : the configurations (the served model sets the
        crop geometry of each call)
    backend : the array backend (auto, numpy, cupy)
    fft_workers : FFT threads per worker (None: all cores)
    processes : run each worker in a child process of its own
    """

    reconstruction: ReconstructionConfig
    segmentation: SegmentationConfig
    backend: BackendName = "auto"
    fft_workers: int | None = None
    processes: bool = True

    def processor(self, reference: np.ndarray | None) -> FrameProcessor:
        return FrameProcessor.create(
            self.reconstruction, self.segmentation, self.backend, self.fft_workers, reference
        )


class Worker(Protocol):
    def process(self, image: np.ndarray, crop: CropGeometry) -> ProcessedFrames: ...

    def close(self) -> None: ...


class LocalWorker:
    """The frame processor in the calling thread."""

    def __init__(self, config: WorkerConfig, reference: np.ndarray | None) -> None:
        self.processor = config.processor(reference)

    def process(self, image: np.ndarray, crop: CropGeometry) -> ProcessedFrames:
        return self.processor.process(image, crop)

    def close(self) -> None:
        pass


class SharedBlock:
    """A shared-memory block the parent creates and its child maps by name.

    Messages through it are ``(pickle, lengths, name)``: the pickle (protocol 5)
    of the object with its out-of-band buffers, their lengths, and the block that
    holds them one after another (None: the buffers follow in-band, a list of
    bytes, as the payload did not fit).
    """

    def __init__(self, size: int = BLOCK_BYTES) -> None:
        self.memory = shared_memory.SharedMemory(create=True, size=size)

    @property
    def name(self) -> str:
        return self.memory.name

    @property
    def size(self) -> int:
        return self.memory.size

    def close(self) -> None:
        with contextlib.suppress(OSError, BufferError):
            self.memory.close()
        with contextlib.suppress(OSError):
            self.memory.unlink()


class _Mapped:
    """The child's view of the parent's blocks, by name (remapped when one grows)."""

    def __init__(self) -> None:
        self._blocks: dict[str, shared_memory.SharedMemory] = {}

    def get(self, name: str) -> memoryview:
        block = self._blocks.get(name)
        if block is None:
            # Mapping registers the name with the resource tracker again; a spawned
            # child shares its parent's tracker, so that is the parent's one entry,
            # which the parent's unlink removes (the child must not unregister it).
            block = shared_memory.SharedMemory(name=name)
            self._blocks[name] = block
        buf = block.buf
        assert buf is not None
        return buf

    def drop_others(self, keep: set[str]) -> None:
        for name in [n for n in self._blocks if n not in keep]:
            with contextlib.suppress(OSError, BufferError):
                self._blocks.pop(name).close()


def pack(obj: Any, block: memoryview | None) -> tuple[bytes, list[int], Any]:
    """``obj`` pickled, its buffers copied into ``block`` when they fit: the pickle,
    the buffers' lengths, and whether they went into the block (else the buffers
    themselves, in-band)."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    lengths = [r.nbytes for r in raws]
    if block is not None and sum(lengths) <= block.nbytes:
        offset = 0
        for raw, n in zip(raws, lengths, strict=True):
            block[offset : offset + n] = raw
            offset += n
        return data, lengths, True
    return data, lengths, [bytes(r) for r in raws]


def unpack(
    data: bytes, lengths: list[int], inline: Any, block: memoryview | None, copy: bool
) -> Any:
    """The object :func:`pack` packed; its buffers copied out of ``block`` when
    ``copy`` (the block is reused), else read in place."""
    if inline is not True:
        return pickle.loads(data, buffers=inline)
    assert block is not None
    views: list[Any] = []
    offset = 0
    for n in lengths:
        view = block[offset : offset + n]
        views.append(bytearray(view) if copy else view)
        offset += n
    return pickle.loads(data, buffers=views)


def _child_main(connection: Any, config: WorkerConfig) -> None:
    """A worker process: the reference first, then frames in, results or errors out.

    A frame message is ``(pickle, lengths, inline, in_block, out_block)``: the frame
    and crop geometry packed into ``in_block`` (:func:`pack`); the answer is packed
    into ``out_block`` when it fits and sent as ``(pickle, lengths, inline, needed)``,
    ``needed`` the bytes its buffers take.
    """
    import signal

    from threadpoolctl import threadpool_limits

    # The parent decides when to stop: a Ctrl+C or a SIGTERM to the process group
    # must not end a worker while it has frames to finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [worker]: %(message)s"
    )
    # The crops' small matrix products gain nothing from BLAS threads, whose spinning
    # would take the cores from the other workers.
    threadpool_limits(1)
    try:
        reference = connection.recv()
    except (EOFError, OSError):
        return
    processor = config.processor(reference)
    mapped = _Mapped()
    try:
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                return
            if message is None:
                return
            data, lengths, inline, in_name, out_name = message
            mapped.drop_others({in_name, out_name})
            frame_in = mapped.get(in_name) if inline is True else None
            out = mapped.get(out_name)
            try:
                image, crop = unpack(data, lengths, inline, frame_in, copy=False)
                answer: tuple[str, Any] = ("ok", processor.process(image, crop))
                del image
            except ValueError as exc:
                answer = ("bad frame", str(exc))
            except Exception as exc:
                answer = ("error", f"{type(exc).__name__}: {exc}")
            packed = pack(answer, out)
            connection.send((*packed, sum(packed[1])))
    finally:
        mapped.drop_others(set())


class ChildWorker:
    """The frame processor in a child process (one per worker thread).

    The reference hologram goes to the child over the pipe, not as a start
    argument: multiprocessing writes start arguments into a pipe whose read end the
    parent still holds, so a child that dies while it starts (a SIGTERM to the
    process group) would leave that write blocked for good; over the connection a
    dead child is an immediate :class:`WorkerDied`.
    """

    def __init__(
        self, config: WorkerConfig, reference: np.ndarray | None, block_bytes: int = BLOCK_BYTES
    ) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_child_main, args=(child, config), name="pipeline-worker", daemon=True
        )
        self._process.start()
        child.close()
        self._in = SharedBlock(block_bytes)
        self._out = SharedBlock(block_bytes)
        self._send(reference)

    def _send(self, message: Any) -> None:
        try:
            self._connection.send(message)
        except (EOFError, OSError) as exc:
            raise WorkerDied(f"the worker process ended ({exc or 'no answer'})") from None

    def process(self, image: np.ndarray, crop: CropGeometry) -> ProcessedFrames:
        data, lengths, inline = pack((image, crop), self._in.memory.buf)
        self._send((data, lengths, inline, self._in.name, self._out.name))
        if inline is not True:  # the frame did not fit: a larger block for the next
            self._grow("_in", sum(lengths))
        try:
            data, lengths, inline, needed = self._connection.recv()
        except (EOFError, OSError) as exc:
            raise WorkerDied(f"the worker process ended ({exc or 'no answer'})") from None
        status, answer = unpack(data, lengths, inline, self._out.memory.buf, copy=True)
        if inline is not True:
            self._grow("_out", needed)
        if status == "ok":
            result: ProcessedFrames = answer
            return result
        if status == "bad frame":
            raise ValueError(answer)
        raise RuntimeError(answer)

    def _grow(self, which: str, needed: int) -> None:
        """Replace block ``which`` by one that holds ``needed`` bytes (with room)."""
        old: SharedBlock = getattr(self, which)
        setattr(self, which, SharedBlock(max(needed + needed // 4, 2 * old.size)))
        old.close()  # the child drops its mapping when it sees the new name

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._connection.send(None)
        self._process.join(CLOSE_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._connection.close()
        self._in.close()
        self._out.close()


def start_worker(config: WorkerConfig, reference: np.ndarray | None) -> Worker:
    """A worker of the kind ``config`` asks for."""
    if config.processes:
        return ChildWorker(config, reference)
    return LocalWorker(config, reference)
