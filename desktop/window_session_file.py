"""The main window's session file commands (File > Save session / Open session):
what goes into a session file and how it is put back (desktop/session_file.py)
onto the window's Session, lanes, ruler and task bar. A mixin of MainWindow."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog

from . import session_file
from .loader import Loaded
from .session import Session
from .takes import LaneTakes, Piece, Take


class SessionFiles:
    # ---- the session file ------------------------------------------------------------
    def session_document(self) -> session_file.SessionDocument:
        """What a session file holds: every lane (file, settings, takes and comp), the selection, the controls."""
        lanes = {}
        for state in self.lanes.states:
            audio = self.session.audio.get(state.name)
            takes = self.session.takes.get(state.name)
            entries = tuple(session_file.TakeEntry(str(t.audio.path), t.label, t.seed, dict(t.settings))
                            for t in (takes.takes if takes else ()))
            pieces = tuple((p.start, p.end, p.take) for p in (takes.pieces if takes else ()))
            flags = {"gain": state.gain, "mute": state.mute, "solo": state.solo, "given": state.given,
                     "selected": state.selected}
            lanes[state.name] = session_file.LaneEntry(None if audio is None else str(audio.path), flags,
                                                       entries, pieces)
        controls = {name: getattr(self.task_bar.controls(), name) for name in session_file.CONTROLS}
        return session_file.SessionDocument(self.song, self.session.stems, lanes, self.ruler.selection(), controls)

    def save_session(self, path) -> Path | None:
        """Write the session file (atomically); None and a message if it cannot be written."""
        path = Path(path)
        if not path.name.endswith(session_file.SUFFIX):
            path = path.with_name(path.name + session_file.SUFFIX)
        try:
            session_file.save(path, self.session_document())
        except OSError as error:
            self.message(f"Cannot save the session to '{path}': {error.strerror or error}. Choose a folder you "
                         "can write to.", "error")
            return None
        self.message(f"Session saved to {path}.")
        return path

    def open_session(self, path) -> bool:
        """Open a session file: its files are read off the GUI thread, then the lanes, takes, settings
        and selection replace the window's (undo starts afresh). False and a message if it cannot."""
        if self.engine.job is not None:
            self.message("Wait for the running job to finish (or cancel it) before opening a session.")
            return False
        try:
            document = session_file.load(path)
        except session_file.SessionFileError as error:
            self.message(str(error), "error")
            return False
        if tuple(document.stems) != self.session.stems:
            self.message(f"'{path}' was made with a model whose stems are {', '.join(document.stems)}; the "
                         f"engine's model has {', '.join(self.session.stems)}. Connect to that model (Engine > "
                         "Settings) to open it. Nothing was opened.", "error")
            return False
        self._read({key: Path(p) for key, p in document.files().items()},
                   lambda loaded: self._restore(document, loaded, path), new_song=True)
        return True

    def _restore(self, document: session_file.SessionDocument, loaded: Loaded, path) -> None:
        restored = Session(stems=self.session.stems)
        try:
            for name, lane in document.lanes.items():
                if name not in restored.lane_names:
                    continue
                if lane.takes:
                    takes = LaneTakes(tuple(Take(loaded.audio[f"{name}#{k}"], t.label, t.seed, t.settings)
                                            for k, t in enumerate(lane.takes, 1)),
                                      tuple(Piece(*p) for p in lane.pieces))
                    shapes = {(t.audio.sample_rate, t.audio.samples.shape) for t in takes.takes}
                    if len(shapes) > 1 or takes.pieces[-1].end != takes.frames:
                        raise session_file.SessionFileError(
                            f"'{path}': the {name} lane's take files no longer have one length and rate (were "
                            "they replaced?). Nothing was opened.")
                    restored.takes[name] = takes
                    single = takes.single_take()
                    restored.audio[name] = single.audio if single is not None else loaded.audio[name]
                else:
                    restored.audio[name] = loaded.audio.get(name)
        except session_file.SessionFileError as error:
            self.message(str(error), "error")
            return
        self.auditioning = None
        self.session = restored
        self.song = document.song
        for name, lane in document.lanes.items():
            if name not in self.lanes.widgets:
                continue
            flags = lane.flags
            widget = self.lanes[name]
            widget.level.setValue(round(float(flags.get("gain", 1.0)) * 100))
            self.lanes.set_flags(name, mute=bool(flags.get("mute")), solo=bool(flags.get("solo")))
            widget.given.setChecked(bool(flags.get("given")))
            self.lanes.set_selected(name, bool(flags.get("selected")))
        self.ruler.set_selection(document.selection)
        self.task_bar.apply_controls(document.controls)
        self.refresh_lanes(fit=True)
        self.message(f"Opened the session {path}.")

    def _save_session_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save session", str(self.session_dir.parent / self.song),
                                              f"MSDM Studio session (*{session_file.SUFFIX})")
        if path:
            self.save_session(path)

    def _open_session_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open session", str(self.session_dir.parent),
                                              f"MSDM Studio session (*{session_file.SUFFIX});;All files (*)")
        if path:
            self.open_session(path)

