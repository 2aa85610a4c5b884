"""The app's OSC client: one QUdpSocket on loopback (or any host) that sends
requests and turns reply datagrams into Qt signals on the GUI thread.

No thread of its own: QUdpSocket's readyRead arrives through the event loop,
so every signal is emitted on the thread that owns the client (the GUI).

Every request is signed with the user's secret file (osc_bridge.auth), which
the engine the app starts makes on its first start: `msdm serve` answers only
the user who runs it. The file is read again on each connect, so a new secret
(the file deleted, the engine restarted) is picked up.

Replies are taken only from the engine's address and port, and only when the
engine signed them with the same secret for one of this client's requests
(auth.check_reply): a reply names the job its request was for, so a signed
error with no job id still belongs to that request's job, and a datagram from
anyone else (another user, another computer) is dropped. The one unsigned
reply taken is the engine's refusal, `/msdm/error <job> unauthorized <why>`,
which it cannot sign for a client with another secret. The socket listens on
loopback; on every interface only for a remote engine (Engine > Settings)."""

from __future__ import annotations

import collections

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtNetwork import QHostAddress, QUdpSocket

from osc_bridge import auth
from osc_bridge.codec import decode_datagram

JOB_ADDRESSES = ("/msdm/separate", "/msdm/generate", "/msdm/impute", "/msdm/cancel")
REMEMBERED_REQUESTS = 1024

from . import osc_messages as osc


class EngineClient(QObject):
    pong = Signal(str, str)                 # version, model
    models = Signal(str, list, int, str)    # model, stems, sample rate, backend
    status = Signal(str, str, float, int)   # state, running job, progress, queued
    accepted = Signal(str, int)             # job, queue position
    progress = Signal(str, float, str)      # job, fraction, message
    firstGuess = Signal(str, dict)          # job, {stem: path}: an interim result (a refined separation's
                                            # guess, a generation's preview); the job goes on
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
        self._requests: collections.OrderedDict[str, str] = collections.OrderedDict()  # nonce -> job id ("": none)
        self.ignored = 0  # datagrams dropped: not from the engine, or not signed for a request of ours
        self.socket: QUdpSocket | None = None
        self._bind(loopback=True)
        self._ping_timer = QTimer(self)
        self._ping_timer.setSingleShot(True)
        self._ping_timer.timeout.connect(lambda: self.unanswered.emit(f"{self.host}:{self.port}"))
        self.pong.connect(lambda *_: self._ping_timer.stop())

    @property
    def connected(self) -> bool:
        return bool(self.host and self.port)

    def _bind(self, loopback: bool) -> None:
        """A socket on any free local port; replies come back to it (reply-to-sender rule).
        On loopback unless the engine is on another computer."""
        if self.socket is not None:
            self.socket.close()
            self.socket.deleteLater()
        self.socket = QUdpSocket(self)
        special = QHostAddress.SpecialAddress.LocalHost if loopback else QHostAddress.SpecialAddress.AnyIPv4
        self.socket.bind(QHostAddress(special), 0)
        self.socket.readyRead.connect(self._read)

    def connect_to(self, host: str, port: int) -> None:
        self.host, self.port = host, int(port)
        self._secret = None  # read again: the engine may have made a new one
        loopback = QHostAddress(host).isLoopback() or host == "localhost"
        if loopback != self.socket.localAddress().isLoopback():
            self._bind(loopback)

    def disconnect_engine(self) -> None:
        self.host, self.port = "", 0
        self._ping_timer.stop()

    def send(self, datagram: bytes) -> None:
        if not self.connected:
            return
        if self._secret is None:
            self._secret = auth.secret_if_present()
        if self._secret is not None:  # without one the engine answers "unauthorized", which the window shows
            nonces: list[str] = []
            job_id = self._job_of(datagram)
            datagram = auth.sign_datagram(self._secret, datagram, nonces=nonces)
            for nonce in nonces:
                self._requests[nonce] = job_id
            while len(self._requests) > REMEMBERED_REQUESTS:
                self._requests.popitem(last=False)
        self.socket.writeDatagram(datagram, QHostAddress(self.host), self.port)

    @staticmethod
    def _job_of(datagram: bytes) -> str:
        """The job a request is about ("" for a query)."""
        try:
            address, args = decode_datagram(datagram)[0]
        except (ValueError, IndexError):
            return ""
        return str(args[0]) if address in JOB_ADDRESSES and args else ""

    def ping(self, timeout_ms: int = 3000) -> None:
        """Ping and ask for the model; ``unanswered`` fires if no pong comes in time."""
        self.send(osc.simple("ping"))
        self.send(osc.simple("models"))
        self._ping_timer.start(timeout_ms)

    def _read(self) -> None:
        while self.socket.hasPendingDatagrams():
            datagram = self.socket.receiveDatagram()
            reply = self._trusted(bytes(datagram.data()), datagram.senderAddress(), datagram.senderPort())
            if reply is None:
                self.ignored += 1
            else:
                self._dispatch(reply)

    def _trusted(self, data: bytes, sender: QHostAddress, sender_port: int) -> osc.Reply | None:
        """The reply, if the engine sent it for one of our requests (module docstring)."""
        if not self.connected or sender_port != self.port or not sender.isEqual(
                QHostAddress(self.host), QHostAddress.ConversionModeFlag.TolerantConversion):
            return None
        try:
            address, args, raw = decode_datagram(data, with_bytes=True)[0]
        except (ValueError, IndexError):
            return None
        if not address.startswith(osc.PREFIX):
            return None
        name = address[len(osc.PREFIX):]
        nonce = auth.check_reply(self._secret, raw, args, self._requests) if self._secret else None
        if nonce is not None:
            args = list(args[:-2])
            job_id = self._requests[nonce]
            if name == "error" and args and args[0] == "" and job_id:
                args[0] = job_id  # the engine refused our job's request before reading its id
            return osc.Reply(name, tuple(args))
        if name == "error" and len(args) >= 3 and args[1] == "unauthorized":
            return osc.Reply(name, tuple(args))  # the engine's unsigned refusal: it cannot sign for our secret
        return None

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
            elif reply.name in ("first_guess", "preview"):
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

