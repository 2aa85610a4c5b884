"""`msdm` with one slow network evaluation, as a child process: the stand-in
for a big model on a CPU, whose one sampler step can outlast any shutdown
timeout. Run as `python tests/support/slow_msdm.py COMMAND ARGS...`, with

    MSDM_SLOW_CALL     which denoiser call is slow (1 = the first)
    MSDM_SLOW_SECONDS  how long it takes
    MSDM_SLOW_MARKER   a file made when that call starts (the moment to send a signal)
"""

from __future__ import annotations

import os
import sys
import threading
import time

from engine.storage import model

_plain = model.ModelSet.denoiser
_calls = 0
_lock = threading.Lock()


def _slow_denoiser(self):
    inner = _plain.fget(self)

    def denoise(x, sigma):
        global _calls
        with _lock:
            _calls += 1
            slow = _calls == int(os.environ["MSDM_SLOW_CALL"])
        if slow:
            open(os.environ["MSDM_SLOW_MARKER"], "w").close()
            time.sleep(float(os.environ["MSDM_SLOW_SECONDS"]))
        return inner(x, sigma)

    return denoise


model.ModelSet.denoiser = property(_slow_denoiser)

if __name__ == "__main__":
    from engine.cli import main

    sys.exit(main(sys.argv[1:]))
