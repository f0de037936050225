"""SIGTERM and Ctrl-C as requests to checkpoint and stop: SIGTERM is what a cluster scheduler
or a preemptible VM sends before it kills a job. The training loop asks the guard after every
step. A second Ctrl-C raises KeyboardInterrupt at once (the steps since the last checkpoint are
lost, the checkpoints are not).

    with PreemptionGuard() as guard:
        for step in ...:
            ...
            if guard.should_stop(step):
                ckpt.save(step, state, config, it, force=True)
                break
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterable
from typing import Any

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class PreemptionGuard:
    """Turns SIGTERM and SIGINT (Ctrl-C) into a flag: `guard.requested` becomes True, `reason`
    names the signal, and the process lives on; after the first SIGINT, the next one raises
    KeyboardInterrupt as usual.

    The previous handlers are restored on exit. Signal handlers can only be installed from the
    main thread; elsewhere the guard logs a warning and never fires. With several JAX processes,
    `should_stop(step)` asks JAX's preemption service instead (all processes must call it at the
    same steps, and then agree on the step to stop at; needs `jax.distributed.initialize()`);
    the service handles SIGTERM itself, so no handler is installed then.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.requested = False
        self.reason = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        del frame
        self.requested = True
        if signum == signal.SIGINT:
            self.reason = self.reason or "Ctrl-C"
            signal.signal(signal.SIGINT, signal.default_int_handler)
            print(
                "\nCtrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again to "
                "stop at once, losing the steps since the last checkpoint).",
                file=sys.stderr,
                flush=True,
            )
        else:
            self.reason = self.reason or signal.Signals(signum).name
            log.warning("Received %s: will save a checkpoint and stop.", self.reason)

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            try:
                if multihost_utils.reached_preemption_sync_point(int(step)):
                    self.requested, self.reason = True, self.reason or "a preemption notice"
            except RuntimeError:  # the preemption service is not running
                pass
        return self.requested

    def __enter__(self) -> PreemptionGuard:
        if jax.process_count() > 1:
            return self
        if threading.current_thread() is not threading.main_thread():
            log.warning("PreemptionGuard outside the main thread: SIGTERM is not intercepted.")
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
