"""A guard against PySide6 6.12.0's reference-count bug in ``Signal.emit()``.

What goes wrong: in PySide6 6.12.0 ``SignalInstance.emit()`` returns ``True``
without taking a new reference to it (6.11.3 does: measured with
``sys.getrefcount(True)`` around 50 emits, -50 on 6.12.0 and 0 on 6.11.3). Every
``.emit()`` made from Python (ours and pyqtgraph's) so takes one reference from
``True``. A run of the app emits hundreds of signals (engine status, job
progress, the lanes' view ranges), more on a busy machine where polls repeat;
once more have been taken than ``True`` has references left when the
interpreter tears down, its count reaches zero and CPython aborts with
"Fatal Python error: bool_dealloc: deallocating True or False" (exit 134),
after the work is done (issue 22: 1 of 3 `msdm app --screenshot` runs).

The fix: pyproject.toml excludes 6.12.0, and where that version (or any other
with the same defect, found by probing, not by version number) is installed
anyway, ``True`` and ``False`` are made immortal as Python 3.12 makes them
(PEP 683): their count is raised so far that no run can use it up, so a
reference taken by mistake is never the last one. On 3.12 and later the bools
already are immortal and the defect is harmless; nothing is changed there.
"""

from __future__ import annotations

import ctypes
import sys

PROBE_EMITS = 64
# 2**40 references: one emit per microsecond for twelve days would not use them up.
IMMORTAL_MARGIN = 1 << 40
_guarded = False


def emit_takes_true() -> bool:
    """True if ``Signal.emit()`` of the installed PySide6 takes a reference to ``True`` (the defect)."""
    from PySide6.QtCore import QObject, Signal

    class Probe(QObject):
        fired = Signal()

    probe = Probe()
    before = sys.getrefcount(True)
    for _ in range(PROBE_EMITS):
        probe.fired.emit()
    # Taken references show as a loss of (about) one per emit; a healthy emit loses none.
    return before - sys.getrefcount(True) >= PROBE_EMITS // 2


def _bools_are_immortal() -> bool:
    return sys.version_info >= (3, 12) or sys.implementation.name != "cpython"


def guard_bool_refcounts() -> bool:
    """Neutralise the defect if the installed PySide6 has it, once per process;
    True if this call made the change."""
    global _guarded
    if _guarded or _bools_are_immortal() or not emit_takes_true():
        return False
    _guarded = True
    for value in (True, False):
        # CPython 3.11's PyObject starts with ob_refcnt (Py_ssize_t): the object's address is its count's.
        count = ctypes.c_ssize_t.from_address(id(value))
        count.value += IMMORTAL_MARGIN
    return True
