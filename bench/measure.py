"""What the benches share: the peak resident memory of this process and its children, sampled per phase."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psutil


class PeakRss:
    """The peak RSS (GiB) of this process and all its children (servers, workers, their runs) per phase."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.phase = "setup"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval_s,), daemon=True)

    def _sample(self, interval_s: float) -> None:
        me = psutil.Process()
        while not self._stop.wait(interval_s):
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    continue
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), total / 2**30)

    def peak(self, phase: str) -> float:
        return round(self.peaks.get(phase, 0.0), 2)

    @contextmanager
    def running(self) -> Iterator[PeakRss]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
