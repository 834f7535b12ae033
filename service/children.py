"""Child processes answering calls through shared memory (the camera loop's
workers, the posted crops' QC).

A call's argument goes to the child, and its answer comes back, through two
shared-memory blocks the parent owns (:class:`SharedBlock`), not through the pipe:
a 1280x1024 frame is 1.3 MB and its maps, labels and crops about as much again,
which through a 64 KB pipe cost both processes tens of system calls and three copies
each way. Each message is pickled with protocol 5, its arrays' buffers laid out in
the block and only the small pickle sent over the pipe; the child reads the argument
in place, and the parent copies the answer's buffers out before the next call
overwrites them. A payload larger than its block goes over the pipe as before, and
the block grows for the next one.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

#: How long a child process gets to finish its call and exit at close.
CLOSE_TIMEOUT_S = 5.0
#: The blocks' first size, bytes (a block grows to fit the largest payload seen).
BLOCK_BYTES = 4 << 20


class ChildDied(RuntimeError):
    """A child process ended (or never answered); a new one takes the next call."""


class SharedBlock:
    """A shared-memory block the parent creates and owns (it unlinks it), and its
    child maps by name: :func:`pack` lays a message's buffers out in it one after
    another, and the pipe carries the pickle, the buffers' lengths and the block's
    name (:meth:`ChildProcess.call`)."""

    def __init__(self, size: int = BLOCK_BYTES) -> None:
        self.memory = shared_memory.SharedMemory(create=True, size=size)

    @property
    def name(self) -> str:
        return self.memory.name

    @property
    def size(self) -> int:
        return self.memory.size

    def grown(self, needed: int) -> SharedBlock:
        """A new block that holds ``needed`` bytes (with room); this one is closed
        (the child drops its mapping when it sees the new name)."""
        new = SharedBlock(max(needed + needed // 4, 2 * self.size))
        self.close()
        return new

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


def settle_child() -> None:
    """What every child does first. It ignores SIGINT and SIGTERM: the parent
    decides when it stops (a Ctrl+C or a SIGTERM to the process group must not end a
    child with work to finish). And one BLAS thread: the small matrix products of
    crops gain nothing from more, whose spinning would take the cores from the other
    processes."""
    import signal

    from threadpoolctl import threadpool_limits

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threadpool_limits(1)


def serve(connection: Any, handle: Callable[[Any], Any]) -> None:
    """The child's side: answer each call with ``handle(argument)`` until the parent
    sends None or goes away. ``handle`` must not raise (it answers its errors)."""
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
            argument_block = mapped.get(in_name) if inline is True else None
            out = mapped.get(out_name)
            argument = unpack(data, lengths, inline, argument_block, copy=False)
            answer = handle(argument)
            del argument  # it lives in the block the next call overwrites
            packed = pack(answer, out)
            connection.send((*packed, sum(packed[1])))
    finally:
        mapped.drop_others(set())


class ChildProcess:
    """A spawned child process that answers :meth:`call` through shared memory.

    ``target(connection, *args)`` runs in the child; it receives the tuple ``first``
    over the pipe (when given: what the child needs before any call), then calls
    :func:`serve`. ``first`` goes over the
    connection, not as a start argument: multiprocessing writes start arguments into
    a pipe whose read end the parent still holds, so a child that dies while it
    starts (a SIGTERM to the process group) would leave that write blocked for good;
    over the connection a dead child is an immediate :class:`ChildDied`.
    """

    def __init__(
        self,
        target: Callable[..., None],
        args: tuple[Any, ...],
        name: str,
        first: tuple[Any, ...] | None = None,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self.process = context.Process(target=target, args=(child, *args), name=name, daemon=True)
        self.process.start()
        child.close()
        self.argument = SharedBlock(block_bytes)
        self.answer = SharedBlock(block_bytes)
        if first is not None:
            self._send(first)

    def _send(self, message: Any) -> None:
        try:
            self._connection.send(message)
        except (EOFError, OSError) as exc:
            raise ChildDied(f"the worker process ended ({exc or 'no answer'})") from None

    def call(self, argument: Any) -> Any:
        """The child's answer to ``argument`` (raises :class:`ChildDied`)."""
        data, lengths, inline = pack(argument, self.argument.memory.buf)
        self._send((data, lengths, inline, self.argument.name, self.answer.name))
        if inline is not True:  # it did not fit: a larger block for the next
            self.argument = self.argument.grown(sum(lengths))
        try:
            data, lengths, inline, needed = self._connection.recv()
        except (EOFError, OSError) as exc:
            raise ChildDied(f"the worker process ended ({exc or 'no answer'})") from None
        answer = unpack(data, lengths, inline, self.answer.memory.buf, copy=True)
        if inline is not True:
            self.answer = self.answer.grown(needed)
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._connection.send(None)
        self.process.join(CLOSE_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._connection.close()
        self.argument.close()
        self.answer.close()
