"""The running service, wired in one place from :class:`Settings`.

Each capability is an object of its own, handed to the routes by one dependency
each (``service/api/deps.py``):

- :class:`Classification`: the model, the shared micro-batcher, the results store;
- :class:`LiveView`: what the operator's page shows;
- :class:`History`: the last minutes second by second, sampled from the metrics;
- :class:`CameraLoop`: the camera loop and its observers (None without a camera);
- :class:`HologramPath`: holograms posted to the API, reconstructed as the loop does.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

from .camera import CameraLoop
from .classification import Classification
from .history import History
from .holograms import HologramPath
from .live import LiveView
from .metrics import Metrics
from .settings import Settings


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    classification: Classification
    live: LiveView
    holograms: HologramPath
    history: History
    camera: CameraLoop | None = None
    started: float = field(default_factory=time.time)

    @classmethod
    def start(cls, settings: Settings) -> Services:
        """Build every capability the settings ask for and start the camera loop."""
        metrics = Metrics()
        spec = settings.camera_spec()
        metrics.camera_enabled.set(spec is not None)
        classification = Classification.start(settings, metrics)
        live = LiveView(opd_range_nm=settings.live_opd_range_nm)
        history = History(metrics, settings.live_history_seconds)
        camera = None
        if spec is not None:
            camera = CameraLoop.build(settings, spec, classification, metrics, live)
        holograms = HologramPath(settings, metrics, live, camera)
        services = cls(settings, metrics, classification, live, holograms, history, camera)
        # What start-up built (modules, the model, the tables) lives as long as the
        # service: frozen, a full collection no longer walks it. Unfrozen, one stopped
        # every thread of the camera loop for 60-110 ms about every 30 s at 80 frames/s.
        gc.freeze()
        history.start()
        if camera is not None:
            camera.start()
        return services

    def close(self) -> None:
        """Stop the camera loop (its queued frames are processed), close the archive,
        drain the batcher, then commit every queued result."""
        self.history.stop()
        if self.camera is not None:
            self.camera.close()
        self.classification.close()
