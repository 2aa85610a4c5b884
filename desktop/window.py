"""The main window: the widgets put together and wired.

Each widget owns its state: the task bar its controls and the job it shows
(task_bar.py), the transport the playback (transport.py), the ruler the view
and the loop region (ruler.py), the lanes their LaneStates (lanes.py). The
window owns the Session (the lanes' audio and undo) and turns what the widgets
ask for into engine jobs (engine_link.py) and file reads (loader.py).

Threads: the GUI thread owns the Session and every widget; the engine link
delivers through the event loop; files are read and resampled on the loader's
worker thread and come back by a signal; the audio thread only reads the Mixer."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Mapping

from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QMainWindow, QMenu, QToolButton, QVBoxLayout, QWidget

from .engine_link import EngineLink
from .export import ExportError, export_lanes
from .jobs import TAKE_TASKS, Job, JobRefused, build_request, check_result, new_job_id, task_options
from .lanes import Lanes
from .loader import FileLoader, Loaded, LoadRequest
from .message_bar import MessageBar
from .qt_refcount import guard_bool_refcounts
from .ruler import Ruler
from .session import MIX, LaneAudio, Session, StemMismatchError, assign_stem_files
from .settings import AppSettings, load_settings, save_settings
from .window_session_file import SessionFiles
from .takes import LaneTakes, Take, TakeError
from .task_bar import TaskBar
from .transport import Transport, make_action, tool_button

DEFAULT_STEMS = ("bass", "drums", "guitar", "piano")
AUDIO_FILTER = "Audio (*.wav *.flac *.ogg *.mp3 *.aif *.aiff *.w64 *.opus);;All files (*)"


class MainWindow(SessionFiles, QMainWindow):
    def __init__(self, settings: AppSettings | None = None, *, start_engine: bool = True) -> None:
        super().__init__()
        guard_bool_refcounts()  # for windows made without make_application (tests): desktop/qt_refcount.py
        self.settings = settings or load_settings()
        self.setWindowTitle("MSDM Studio")
        self.resize(1280, 760)
        self.session = Session(stems=DEFAULT_STEMS)
        self.song = "untitled"
        self._jobs_run = 0
        self._comps_written = 0
        self.auditioning: tuple[str, int] | None = None   # (lane, take) the lane plays instead of its comp
        self.session_dir = (Path(self.settings.output_root).expanduser().resolve() /
                            f"session-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")

        self.engine = EngineLink(self)
        self.loader = FileLoader(self)
        self.transport = Transport(self)
        self.task_bar = TaskBar(self.settings)
        self.message_bar = MessageBar()
        self.ruler = Ruler()
        self.lanes = Lanes()
        self.engine_label = QLabel("Engine: starting…")
        self._build_actions()
        self._build_ui()
        self._connect()
        self.lanes.set_names(self.session.lane_names, x_link=self.ruler.plot)
        self.refresh_lanes()
        self.transport.report_problem()
        if start_engine:
            self.start_engine()

    @property
    def messages(self) -> list[tuple[str, str]]:
        """Every message shown, (level, text), newest last."""
        return self.message_bar.messages

    # ---- composition ----------------------------------------------------------
    def _build_actions(self) -> None:
        def action(text, slot, shortcut=None, tip=""):
            return make_action(self, text, slot, shortcut, tip)

        self.open_action = action("Open mix…", self._open_mix_dialog, "Ctrl+O", "Open a song (the mix)")
        self.stems_action = action("Open stems…", self._open_stems_dialog, "Ctrl+Shift+O",
                                   "Open stem files onto the stem lanes")
        self.export_action = action("Export…", self._export_dialog, "Ctrl+E", "Export the stems as files")
        self.save_session_action = action("Save session…", self._save_session_dialog, "Ctrl+S",
                                          "Save the lanes, takes, comps, selection and settings to a session file")
        self.open_session_action = action("Open session…", self._open_session_dialog, "Ctrl+Shift+S",
                                          "Open a saved session file")
        self.undo_action = action("Undo", self.undo, "Ctrl+Z", "Put back the lanes as they were before the last result")
        self.settings_action = action("Settings…", self._settings_dialog, None, "Engine and work folder")
        self.restart_action = action("Restart engine", self.restart_engine)
        self.quit_action = action("Quit", self.close, "Ctrl+Q")

        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        file_menu.addAction(self.open_action)
        file_menu.addAction(self.stems_action)
        self.recent_menu = QMenu("Open recent", self)
        file_menu.addMenu(self.recent_menu)
        file_menu.addAction(self.export_action)
        file_menu.addSeparator()
        file_menu.addAction(self.open_session_action)
        file_menu.addAction(self.save_session_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        menu.addMenu("&Edit").addAction(self.undo_action)
        play_menu = menu.addMenu("&Transport")
        for a in (self.transport.play_action, self.transport.stop_action, self.transport.loop_action):
            play_menu.addAction(a)
        engine_menu = menu.addMenu("E&ngine")
        engine_menu.addAction(self.settings_action)
        engine_menu.addAction(self.restart_action)
        self._fill_recent()

    def _build_ui(self) -> None:
        central = QWidget()
        root = QVBoxLayout(central)
        root.setContentsMargins(8, 6, 8, 4)
        root.setSpacing(6)
        top = QHBoxLayout()  # files, transport, then undo / export / settings at the right
        for a in (self.open_action, self.stems_action):
            top.addWidget(tool_button(a))
        recent = QToolButton()
        recent.setText("Recent")
        recent.setMenu(self.recent_menu)
        recent.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        top.addWidget(recent)
        top.addSpacing(18)
        top.addWidget(self.transport)
        top.addStretch(1)
        for a in (self.undo_action, self.export_action, self.settings_action):
            top.addWidget(tool_button(a))
        root.addLayout(top)
        root.addWidget(self.task_bar)
        root.addWidget(self.message_bar)
        root.addWidget(self.ruler)
        root.addWidget(self.lanes, 1)
        self.setCentralWidget(central)
        self.statusBar().addPermanentWidget(self.engine_label)

    def _connect(self) -> None:
        engine, transport, ruler, lanes = self.engine, self.transport, self.ruler, self.lanes
        engine.status.connect(self.engine_label.setText)
        engine.message.connect(self.message)
        engine.modelReady.connect(self._on_model)
        engine.changed.connect(self._update_controls)
        engine.progressed.connect(self.task_bar.show_job)
        engine.ended.connect(self.task_bar.show_outcome)
        engine.answered.connect(self._on_answered)
        engine.firstGuess.connect(self._on_first_guess)
        engine.takeArrived.connect(self._on_take)
        lanes.takeRequested.connect(self.take_action)
        transport.stop_action.triggered.connect(self.end_audition)
        self.task_bar.taskRequested.connect(self.run_task)
        self.task_bar.cancelRequested.connect(engine.cancel)
        transport.message.connect(self.message)
        transport.positionChanged.connect(ruler.set_playhead)
        transport.positionChanged.connect(lanes.set_playhead)
        transport.loop_action.toggled.connect(ruler.set_looping)
        ruler.seekRequested.connect(transport.seek)
        ruler.loopChanged.connect(transport.set_loop)
        ruler.loopChanged.connect(lanes.set_loop)
        lanes.settingChanged.connect(lambda name, changes: transport.update_lane(name, **changes))
        lanes.filesDropped.connect(self.drop_files)

    def message(self, text: str, level: str = "info") -> None:
        """Show a message inline; levels: info, warning, error."""
        self.message_bar.show_message(text, level)
        self.statusBar().showMessage(text.split(". ")[0], 8000)

    # ---- opening files (read off the GUI thread) ---------------------------------
    def _open_mix_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a mix", self._last_folder(), AUDIO_FILTER)
        if path:
            self.open_mix(path)

    def _open_stems_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Open stems", self._last_folder(), AUDIO_FILTER)
        if paths:
            self.open_stems(paths)

    def _last_folder(self) -> str:
        return str(Path(self.settings.recent[0]).parent) if self.settings.recent else str(Path.home())

    def open_mix(self, path: str | Path) -> None:
        """A new song: once read, the file goes on the mix lane and the stem
        lanes are cleared (undoable). The lanes change when ``loader.finished`` says so."""
        path = Path(path)

        def opened(loaded: Loaded) -> None:
            result: dict[str, LaneAudio | None] = {name: None for name in self.session.stems}
            result[MIX] = loaded.audio[MIX]
            if self._apply(result, f"open {path.name}"):
                self.song = path.stem
                self._remember(path)
                self.lanes.set_flags(MIX, mute=False)
                self.refresh_lanes(fit=True)
                self.statusBar().showMessage(f"Opened {path}", 5000)

        self._read({MIX: path}, opened, new_song=True)

    def open_stems(self, paths: list) -> bool:
        """Stem files onto stem lanes: matched by name (drums.wav -> drums), others
        fill empty lanes. False (and a message) if they cannot be placed."""
        try:
            free = [s for s in self.session.stems if self.session.audio.get(s) is None]
            placed = assign_stem_files(paths, self.session.stems, free)
        except StemMismatchError as error:
            self.message(f"{error} Nothing was opened.", "error")
            return False
        self._load_onto(placed, "open stems")
        return True

    def drop_files(self, lane: str, paths: list) -> None:
        """Files dropped on a lane: one file replaces that lane; several are placed as stems."""
        if lane == MIX and len(paths) == 1:
            self.open_mix(paths[0])
        elif len(paths) == 1:
            self._load_onto({lane: Path(paths[0])}, f"drop on {lane}")
        else:
            self.open_stems(paths)

    def _load_onto(self, placed: Mapping[str, Path], label: str) -> None:
        def loaded_onto(loaded: Loaded) -> None:
            if self._apply(loaded.audio, label):
                for path in placed.values():
                    self._remember(path)
                if self.session.audio.get(MIX) is None and self.song == "untitled":
                    self.song = Path(next(iter(placed.values()))).parent.name or "untitled"
                self.refresh_lanes(fit=True)

        self._read(placed, loaded_onto)

    def _read(self, paths: Mapping[str, Path], then: Callable[[Loaded], None], *, new_song: bool = False,
              on_error: Callable[[], None] | None = None) -> None:
        """Read files (and prepare them for playback) on the loader's thread, then
        ``then(loaded)`` here; a file that cannot be read is a message and changes nothing."""
        def request() -> LoadRequest:  # built when its turn comes: the lanes as the reads before it left them
            keep = {name: None if new_song else audio for name, audio in self.session.audio.items()}
            return LoadRequest(paths=dict(paths), keep=keep, cached=self.transport.cache.keys())

        def done(loaded: Loaded) -> None:
            if on_error is not None and not loaded.ok:
                on_error()
            if not loaded.ok:
                self.message(loaded.error, "error")
                return
            self.transport.add_prepared(loaded.prepared)
            then(loaded)

        self.loader.submit(request, done)

    def _apply(self, result: Mapping[str, LaneAudio | None], label: str, refine: bool = False) -> bool:
        """Put a result on the lanes (a new undo step, or with `refine` in the
        step of the first guess it replaces); a mismatch is a message."""
        try:
            if refine:
                self.session.refine_result(result)
            else:
                self.session.apply_result(result, label)
        except StemMismatchError as error:
            self.message(str(error), "error")
            return False
        return True

    def _remember(self, path) -> None:
        self.settings.add_recent(str(path))
        self._fill_recent()
        save_settings(self.settings)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for path in self.settings.recent:
            self.recent_menu.addAction(Path(path).name, lambda p=path: self.open_mix(p)).setToolTip(path)
        self.recent_menu.setEnabled(bool(self.settings.recent))

    # ---- lanes -------------------------------------------------------------------
    def _on_model(self, stems: list) -> None:
        """The engine's model has these stems: the lanes follow it."""
        if tuple(stems) != self.session.stems:
            self.session.set_stems(stems)
            self.lanes.set_names(self.session.lane_names)
            self.refresh_lanes()

    def refresh_lanes(self, fit: bool = False) -> None:
        """The session changed: redraw the lanes, play what they hold, fit the ruler (a new song)."""
        audio = dict(self.session.audio)
        if self.auditioning is not None:
            lane, number = self.auditioning
            audio[lane] = self.session.takes[lane].take(number).audio
        self.lanes.show_audio(audio)
        self.lanes.show_takes(self.session.takes)
        self.transport.show_lanes(self.lanes.states, keep=self.session.undo_audio())
        self.ruler.set_length(self.transport.length, fit)
        self._update_controls()

    def given_stems(self) -> list[str]:
        return self.lanes.given_stems()

    # ---- jobs --------------------------------------------------------------------
    def start_engine(self) -> None:
        self.engine.start(self.settings, self.session_dir.parent)

    def restart_engine(self) -> None:
        self.engine.restart(self.settings, self.session_dir.parent)

    def run_task(self, kind: str, **extra) -> str | None:
        """Send Separate / Generate / Impute to the engine; returns the job id (None if it could not start)."""
        if self.engine.job is not None:
            self.message(f"{self.engine.job.kind.capitalize()} is still running: wait for it or press Cancel.")
            return None
        if self.loader.busy:
            self.message("Files are still being read onto the lanes: try again in a moment.")
            return None
        if not self.engine.ready:
            self.message("The engine is not ready yet (see the status bar). Try again in a moment, or check "
                         "Engine > Settings.", "warning")
            return None
        self._jobs_run += 1
        job_id = new_job_id(kind)
        out_dir = self.session_dir / f"{self._jobs_run:02d}-{kind}"
        mix = self.session.audio.get(MIX)
        if kind == "impute":
            given = {s: str(self.session.audio[s].path) for s in self.given_stems()}
        elif kind == "regenerate":  # every stem lane with audio is heard; the selected ones change in the range
            given = {s: str(self.session.audio[s].path) for s in self.session.stems if self.session.audio.get(s)}
        else:
            given = {}
        controls = self.task_bar.controls()
        try:
            expected, datagram = build_request(kind, job_id, out_dir, controls, self.session.stems,
                                               mix=str(mix.path) if mix is not None else None, given=given,
                                               extra=extra, time_range=self.ruler.selection(),
                                               regenerate=tuple(self.lanes.selected_stems()))
        except JobRefused as refusal:
            self.message(str(refusal))
            return None
        options = {**task_options(kind, controls), **extra}
        if kind == "regenerate":
            options.update(range=self.ruler.selection(), regenerate=",".join(self.lanes.selected_stems()))
        self.end_audition()
        self.engine.submit(Job(kind=kind, id=job_id, out_dir=out_dir, expected=tuple(expected), options=options,
                               takes=controls.takes if kind in TAKE_TASKS else 1), datagram)
        return job_id

    def cancel_job(self) -> None:
        self.engine.cancel()

    def _on_answered(self, job: Job, files: dict) -> None:
        """The engine finished: its files are read off the GUI thread; the job ends once they are on the lanes."""
        kind = job.kind.capitalize()
        problems = check_result(job, files)
        if problems:
            self.engine.end_job()
            self.task_bar.show_outcome(f"{kind}: bad result")
            self.message(f"{kind} finished but its result cannot be used: {'; '.join(problems)}. "
                         "Your lanes are unchanged.", "error")
            return
        paths = {stem: Path(path) for stem, path in files.items() if stem in self._lanes_written(job)}

        def failed() -> None:
            self.engine.end_job()
            self.task_bar.show_outcome(f"{kind}: failed")

        if job.kind in TAKE_TASKS and job.takes > 1:  # its takes came one by one; this lists take 1 again
            if job.takes_shown >= job.takes:
                self._finish_takes(job)
            return
        if job.kind in TAKE_TASKS:
            self._read(paths, lambda loaded: self._show_take(job, loaded, 1, int(job.options.get("seed", 0))),
                       on_error=failed)
            return
        self._read(paths, lambda loaded: self._show_result(job, loaded), on_error=failed)

    def _lanes_written(self, job: Job) -> tuple[str, ...]:
        """The lanes a job's result goes on: Regenerate's mix file is not put on the Mix
        lane, which keeps the song you opened (the stems play)."""
        names = self.session.lane_names
        return tuple(n for n in names if not (job.kind == "regenerate" and n == MIX))

    def _on_take(self, job: Job, number: int, seed: int, files: dict) -> None:
        """One take of a job with several: on the lanes as soon as it is read (off the GUI thread)."""
        if check_result(job, files):
            return  # not usable: /msdm/done's check reports it
        paths = {stem: Path(path) for stem, path in files.items() if stem in self._lanes_written(job)}
        self._read(paths, lambda loaded: self._show_take(job, loaded, number, seed))

    def _show_take(self, job: Job, loaded: Loaded, number: int, seed: int) -> None:
        """A take of each lane the job wrote; the lanes play it. The job's first take is one undo step with
        the ones after it."""
        if self.engine.job is not job:
            return
        kind = job.kind.capitalize()
        label = f"{kind} {number}/{job.takes}" if job.takes > 1 else kind
        takes = {name: Take(audio, label, seed, dict(job.options)) for name, audio in loaded.audio.items()}
        try:
            self.session.add_takes(takes, kind, new_step=job.takes_shown == 0)
        except StemMismatchError as error:
            self.message(str(error), "error")
            return
        job.takes_shown += 1
        muted = self._mute_mix_for_stems() if MIX not in takes else ""
        self.refresh_lanes(fit=self.session.audio.get(MIX) is None or job.kind == "generate")
        if job.takes > 1 and job.takes_shown < job.takes:
            self.message(f"Take {number} of {job.takes} is on the lanes ({', '.join(takes)}): listen while the "
                         f"next is made. {muted}")
        if job.takes_shown >= job.takes and (job.answered or job.takes == 1):
            self._finish_takes(job, muted)

    def _finish_takes(self, job: Job, muted: str = "") -> None:
        kind = job.kind.capitalize()
        self.engine.end_job()
        elapsed = time.monotonic() - job.started
        self.task_bar.show_outcome(f"{kind}: done in {elapsed:.{0 if elapsed >= 10 else 1}f} s", 1000)
        what = f"{job.takes} takes" if job.takes > 1 else "a take"
        self.message(f"{kind} done in {elapsed:.1f} s: {what} on each lane it wrote (files in {job.out_dir}). "
                     f"Pick a take in a lane's box, or comp one into the ruler's Range from its Takes menu. "
                     f"{muted}Undo (Ctrl+Z) puts the previous lanes back.")
        self._update_controls()

    # ---- takes: switch, audition, comp, keep, delete (each an undo step) ------------
    def take_action(self, lane: str, action: str, number: int) -> bool:
        """Do `action` (choose | audition | comp | delete | keep) with take `number` of `lane`; False and a
        message when it cannot be done."""
        if self.engine.job is not None or self.loader.busy:
            self.message("Wait for the running job (or the files being read) before changing takes.")
            return False
        lane_takes = self.session.takes.get(lane)
        if lane_takes is None:
            self.message(f"The {lane} lane has no takes yet: Generate, Impute or Regenerate make them.")
            return False
        if action == "audition":
            return self.audition(lane, number)
        try:
            if action == "choose":
                changed = lane_takes.choose(number)
            elif action == "comp":
                region = self.ruler.selection()
                if region is None:
                    raise TakeError("Select the range to comp into first: press Range on the ruler and drag it.")
                rate = lane_takes.takes[0].audio.sample_rate
                changed = lane_takes.comp(round(region[0] * rate), round(region[1] * rate), number)
            elif action == "delete":
                changed = lane_takes.delete(number)
            elif action == "keep":
                changed = lane_takes.keep_chosen()
            else:
                raise ValueError(f"unknown take action {action!r}")
        except TakeError as error:
            self.message(str(error), "warning")
            return False
        self.auditioning = None
        self.session.change_takes(lane, changed, self._comp_audio(lane, changed),
                                  f"{action} take {number} on {lane}")
        self.refresh_lanes()
        self._update_controls()
        return True

    def _comp_audio(self, lane: str, takes: LaneTakes) -> LaneAudio:
        """What the lane plays: a take's own audio (and file), or the comp rendered
        and written (float WAV, atomically) into the session folder, so that jobs and
        drags read it as a file too."""
        from engine.audio.files import write_audio

        single = takes.single_take()
        if single is not None:
            return single.audio
        self._comps_written += 1
        first = takes.takes[0].audio
        samples = takes.render()
        path = write_audio(self.session_dir / "comps" / f"{lane}-comp-{self._comps_written}.wav", samples,
                           first.sample_rate, bits="32f")
        return LaneAudio(samples, first.sample_rate, Path(path).resolve())

    def audition(self, lane: str, number: int) -> bool:
        """The lane plays take `number` instead of its comp until Stop, another take action or a job."""
        try:
            self.session.takes[lane].take(number)
        except (TakeError, AttributeError) as error:
            self.message(str(error) if isinstance(error, TakeError) else f"The {lane} lane has no takes.", "warning")
            return False
        self.auditioning = (lane, number)
        self.refresh_lanes()
        self.message(f"Auditioning take {number} on {lane}: pick it in the lane's box to keep it; Stop ends the "
                     "audition.")
        return True

    def end_audition(self) -> None:
        if self.auditioning is not None:
            self.auditioning = None
            self.refresh_lanes()

    def _on_first_guess(self, job: Job, files: dict) -> None:
        """A refined separation sent its first guess (or a generation its
        preview, the first window alone): put it on the lanes now (read off
        the GUI thread), while the engine goes on; the final stems replace it
        in the same undo step."""
        if check_result(job, files):
            return  # not usable: wait for the refined result, which is checked and reported
        paths = {stem: Path(path) for stem, path in files.items() if stem in self.session.lane_names}

        def show(loaded: Loaded) -> None:
            if self.engine.job is not job or job.answered or not self._apply(loaded.audio, job.kind.capitalize()):
                return  # the job ended (or its result came) while the guess was read
            job.first_guess_shown = True
            muted = self._mute_mix_for_stems()
            self.refresh_lanes()
            if job.kind == "separate":
                self.message("First guess on the lanes: listen while the model refines it; the refined stems "
                             f"replace it when ready. {muted}")
            else:
                self.message("Preview on the lanes (the first few seconds): listen while the rest is generated; "
                             f"the whole result replaces it when ready. {muted}")

        self._read(paths, show)

    def _show_result(self, job: Job, loaded: Loaded) -> None:
        kind = job.kind.capitalize()
        self.engine.end_job()
        if not self._apply(loaded.audio, kind, refine=job.first_guess_shown):
            return
        elapsed = time.monotonic() - job.started
        self.task_bar.show_outcome(f"{kind}: done in {elapsed:.{0 if elapsed >= 10 else 1}f} s", 1000)
        # The stems sum to the mix: play them, not both, and say so (issue 22: a silent mute puzzled).
        muted = self._mute_mix_for_stems()
        self.refresh_lanes(fit=self.session.audio.get(MIX) is None or kind == "Generate")
        self.message(f"{kind} done in {elapsed:.1f} s: {len(loaded.audio)} lanes filled (files in {job.out_dir}). "
                     f"{muted}Undo (Ctrl+Z) puts the previous lanes back.")

    def _mute_mix_for_stems(self) -> str:
        """Mute the mix lane (the stems sum to it, playing both doubles it); the sentence that says so."""
        if self.lanes.state(MIX).mute:
            return ""
        self.lanes.set_flags(MIX, mute=True)
        return "The mix lane is muted so you hear the stems (its M button unmutes it). "

    def undo(self) -> None:
        if self.engine.job is not None:
            self.message("Wait for the running job to finish (or cancel it) before undoing.")
            return
        if self.loader.busy:
            self.message("Files are still being read onto the lanes: undo once they are there.")
            return
        self.auditioning = None
        label = self.session.undo()
        if label:
            self.refresh_lanes(fit=True)
            self.statusBar().showMessage(f"Undid {label}", 5000)

    # ---- export, settings, closing ------------------------------------------------
    def export_to(self, folder, fmt: str, bits: str, pattern: str, include_mix: bool = False) -> list[Path]:
        names = [n for n in self.session.lane_names if (include_mix or n != MIX) and self.session.audio.get(n)]
        lanes = {n: self.session.audio[n] for n in names}
        try:
            written = export_lanes(lanes, folder, song=self.song, fmt=fmt, bits=bits, pattern=pattern)
        except ExportError as error:
            self.message(str(error), "error")
            return []
        self.message(f"Exported {len(written)} files to {folder}.")
        return written

    def _export_dialog(self) -> None:
        from .dialogs import ExportDialog

        dialog = ExportDialog(self.settings, self)
        if dialog.exec():
            dialog.apply(self.settings)
            save_settings(self.settings)
            self.export_to(self.settings.export_folder, self.settings.export_format, self.settings.export_bits,
                           self.settings.export_pattern, dialog.include_mix.isChecked())

    def _settings_dialog(self) -> None:
        from .dialogs import SettingsDialog

        dialog = SettingsDialog(self.settings, self)
        if dialog.exec():
            dialog.apply(self.settings)
            save_settings(self.settings)
            self.session_dir = (Path(self.settings.output_root).expanduser().resolve() / self.session_dir.name)
            self.restart_engine()

    def _update_controls(self) -> None:
        job = self.engine.job
        self.task_bar.set_state(self.engine.ready, job)
        self.undo_action.setEnabled(self.session.can_undo and job is None)
        self.export_action.setEnabled(bool([n for n in self.session.filled() if n != MIX]))

    def closeEvent(self, event) -> None:
        self.task_bar.store(self.settings)
        save_settings(self.settings)
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop sound, file reading and the local engine (also used by tests and --screenshot)."""
        self.transport.shutdown()
        self.loader.stop()
        self.engine.shutdown()
