"""The camera loop: grab thread, bounded frame queue, workers, classification and
storage, with its states, error reasons and counts."""

from .frame_queue import FrameQueue
from .runner import AcquisitionRunner, Classifier, FrameResult, LoopStatus, StoredCells
from .states import Count, ErrorReason, RunState
from .workers import WorkerConfig, WorkerDied

__all__ = [
    "AcquisitionRunner",
    "Classifier",
    "Count",
    "ErrorReason",
    "FrameQueue",
    "FrameResult",
    "LoopStatus",
    "RunState",
    "StoredCells",
    "WorkerConfig",
    "WorkerDied",
]
