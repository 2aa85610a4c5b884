"""The app's OSC client: one QUdpSocket on loopback (or any host) that sends
requests and turns reply datagrams into Qt signals on the GUI thread.

No thread of its own: QUdpSocket's readyRead arrives through the event loop,
so every signal is emitted on the thread that owns the client (the GUI).

Every request is signed with the user's secret file (osc_bridge.auth), which
the engine the app starts makes on its first start: `msdm serve` answers only
the user who runs it. The file is read again on each connect, so a new secret
(the file deleted, the engine restarted) is picked up."""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtNetwork import QHostAddress, QUdpSocket

from osc_bridge import auth

from . import osc_messages as osc


class EngineClient(QObject):
    pong = Signal(str, str)                 # version, model
    models = Signal(str, list, int, str)    # model, stems, sample rate, backend
    status = Signal(str, str, float, int)   # state, running job, progress, queued
    accepted = Signal(str, int)             # job, queue position
    progress = Signal(str, float, str)      # job, fraction, message
    firstGuess = Signal(str, dict)          # job, {stem: path}: a refined separation's guess; the job goes on
    done = Signal(str, dict)                # job, {stem: path}
    take = Signal(str, int, int, dict)      # job, take number, seed, {stem: path}: one take of several
    error = Signal(str, str, str)           # job ("" if none), code, message
    cancelled = Signal(str)                 # job
    unanswered = Signal(str)                # a ping got no pong in time: says where

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.host = ""
        self.port = 0
        self._secret: bytes | None = None
        self.socket = QUdpSocket(self)
        # Any free local port; replies come back to it (reply-to-sender rule).
        self.socket.bind(QHostAddress(QHostAddress.SpecialAddress.AnyIPv4), 0)
        self.socket.readyRead.connect(self._read)
        self._ping_timer = QTimer(self)
        self._ping_timer.setSingleShot(True)
        self._ping_timer.timeout.connect(lambda: self.unanswered.emit(f"{self.host}:{self.port}"))
        self.pong.connect(lambda *_: self._ping_timer.stop())

    @property
    def connected(self) -> bool:
        return bool(self.host and self.port)

    def connect_to(self, host: str, port: int) -> None:
        self.host, self.port = host, int(port)
        self._secret = None  # read again: the engine may have made a new one

    def disconnect_engine(self) -> None:
        self.host, self.port = "", 0
        self._ping_timer.stop()

    def send(self, datagram: bytes) -> None:
        if not self.connected:
            return
        if self._secret is None:
            self._secret = auth.secret_if_present()
        if self._secret is not None:  # without one the engine answers "unauthorized", which the window shows
            datagram = auth.sign_datagram(self._secret, datagram)
        self.socket.writeDatagram(datagram, QHostAddress(self.host), self.port)

    def ping(self, timeout_ms: int = 3000) -> None:
        """Ping and ask for the model; ``unanswered`` fires if no pong comes in time."""
        self.send(osc.simple("ping"))
        self.send(osc.simple("models"))
        self._ping_timer.start(timeout_ms)

    def _read(self) -> None:
        while self.socket.hasPendingDatagrams():
            datagram = self.socket.receiveDatagram()
            reply = osc.parse(bytes(datagram.data()))
            if reply is not None:
                self._dispatch(reply)

    def _dispatch(self, reply: osc.Reply) -> None:
        a = reply.args
        try:
            if reply.name == "pong":
                self.pong.emit(str(a[0]), str(a[1]) if len(a) > 1 else "")
            elif reply.name == "models":
                stems = [s for s in str(a[1]).split(",") if s]
                self.models.emit(str(a[0]), stems, int(a[2]), str(a[3]) if len(a) > 3 else "")
            elif reply.name == "status":
                self.status.emit(str(a[0]), str(a[1]), float(a[2]), int(a[3]))
            elif reply.name == "accepted":
                self.accepted.emit(str(a[0]), int(a[1]))
            elif reply.name == "progress":
                self.progress.emit(str(a[0]), float(a[1]), str(a[2]) if len(a) > 2 else "")
            elif reply.name == "first_guess":
                self.firstGuess.emit(str(a[0]), osc.pairs(a[1:]))
            elif reply.name == "take":
                self.take.emit(str(a[0]), int(a[1]), int(a[2]), osc.pairs(a[3:]))
            elif reply.name == "done":
                self.done.emit(str(a[0]), osc.pairs(a[1:]))
            elif reply.name == "error":
                self.error.emit(str(a[0]), str(a[1]), str(a[2]) if len(a) > 2 else "")
            elif reply.name == "cancelled":
                self.cancelled.emit(str(a[0]))
        except (IndexError, ValueError, TypeError):
            pass  # a malformed reply is dropped; the job's watchdog reports silence

