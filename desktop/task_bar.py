"""The task bar: Separate / Generate / Impute, their settings (steps,
resamples, seed, sampler, Separate by, likelihood, length), the running job's
progress and time left, and Cancel.

It owns its controls and shows one job; pressing a task button only sends the
request out (``taskRequested``): the window builds the job from ``controls()``
(desktop/jobs.py, a pure function) and tells the bar what runs (``set_state``,
``show_job``, ``show_outcome``). Control ranges come from the engine's option
table (engine/jobs/options.py)."""

from __future__ import annotations

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, \
    QSpinBox, QVBoxLayout, QWidget

from engine.jobs.options import LIKELIHOODS, METHODS, OPTIONS_BY_NAME

from .jobs import SEPARATION_MODES, TASKS, Job, TaskControls, format_left
from .settings import AppSettings

# The engine's samplers (its option table), the app's default first.
SAMPLERS = ("dpmpp2m", *(m for m in METHODS if m != "dpmpp2m"))
REFRESH_MS = 200   # the time left is re-estimated this often while a job runs
# The longest text the progress label shows whole (issue 22: "Separate: done in" was cut).
LONGEST_OUTCOME = "Generate: done in 10000 s"
STEPS_LABEL = "Steps"
# With Separate by "first guess" the separation takes no steps: the box is Generate's and Impute's.
STEPS_LABEL_NO_SEPARATE = "Steps (Generate, Impute)"


def limits(name: str, cap: int | None = None) -> tuple[int, int]:
    """A control's range: the engine's option table's limits (engine.jobs.options),
    at most `cap` where the app offers less (a narrow task row)."""
    option = OPTIONS_BY_NAME[name]
    return int(option.low), int(option.high if cap is None else min(option.high, cap))


class TaskBar(QFrame):
    taskRequested = Signal(str)   # separate / generate / impute
    cancelRequested = Signal()

    def __init__(self, settings: AppSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("taskBar")
        self.job: Job | None = None
        self.labels: dict[str, QLabel] = {}
        # Two rows, so that both fit the default 1280 px window: the tasks and the
        # running job's progress above, the sampler settings below.
        rows = QVBoxLayout(self)
        rows.setContentsMargins(8, 4, 8, 4)
        rows.setSpacing(3)
        tasks, row = QHBoxLayout(), QHBoxLayout()
        tasks.setSpacing(5)
        row.setSpacing(5)
        rows.addLayout(tasks)
        rows.addLayout(row)
        self.separate_button = QPushButton("Separate")
        self.generate_button = QPushButton("Generate")
        self.impute_button = QPushButton("Impute")
        self.regenerate_button = QPushButton("Regenerate")
        self.separate_button.setToolTip("Split the mix lane into the stem lanes")
        self.generate_button.setToolTip("Make a new piece: every stem and the mix")
        self.impute_button.setToolTip("Keep the stems ticked 'given' and generate the others to fit them")
        self.regenerate_button.setToolTip("Write the selected ('sel') stem lanes anew inside the ruler's range; "
                                          "everything else is kept and heard by the model on both sides")
        self.task_buttons = dict(zip(TASKS, (self.separate_button, self.generate_button, self.impute_button,
                                             self.regenerate_button)))
        for kind, button in self.task_buttons.items():
            button.setObjectName("task")
            button.clicked.connect(lambda _=False, k=kind: self.taskRequested.emit(k))
            tasks.addWidget(button)
        self.takes = self._spin(QSpinBox(), *limits("takes"), 1, "Takes",
                                "Takes per Generate, Impute or Regenerate (seeds Seed, Seed+1, ...): each "
                                "arrives on the lanes when done; pick one per lane, or one per range", tasks)
        tasks.addSpacing(12)
        steps_low = max(1, limits("steps")[0])  # 0 (the first guess itself) is a Separate-by choice
        self.steps = self._spin(QSpinBox(), steps_low, limits("steps", 1000)[1], settings.steps,
                                STEPS_LABEL, "Noise levels of the sampler: more is slower and cleaner (paper: 150)", row)
        self.resamples = self._spin(QSpinBox(), *limits("resamples", 20), settings.resamples, "Resamples",
                                    "Correction passes per step for Separate (paper: 2)", row)
        self.seed = self._spin(QSpinBox(), 0, limits("seed")[1], settings.seed, "Seed", "Same seed, same audio", row)
        row.addWidget(QLabel("Sampler"))
        self.method = QComboBox()
        self.method.addItems(SAMPLERS)
        self.method.setCurrentText(settings.method if settings.method in SAMPLERS else SAMPLERS[0])
        self.method.setToolTip("dpmpp2m: near the paper's quality in few steps (32 steps, 1 resample);\n"
                               "euler: the paper's sampler, needs many steps (150, 2 resamples);\n"
                               "heun: two evaluations per step, for generation")
        row.addWidget(self.method)
        self.separation = QComboBox()
        self.separation.addItems(list(SEPARATION_MODES))
        self.separation.setCurrentText(settings.separation if settings.separation in SEPARATION_MODES
                                       else "first guess")
        self.separation.setToolTip("How Separate works. first guess: the model's fast separator, in about a "
                                   "second;\nrefined guess: that guess refined by the diffusion model (Steps);\n"
                                   "from noise: the paper's diffusion sampler (Steps, Resamples, Sampler)")
        row.addWidget(self.separation)
        self.likelihood = QComboBox()
        self.likelihood.addItems(LIKELIHOODS)
        self.likelihood.setCurrentText(settings.likelihood)
        self.likelihood.setToolTip("Likelihood, for Separate refined or from noise. dirac: the stems sum to the "
                                   "mix exactly; gaussian: a soft constraint")
        row.addWidget(self.likelihood)
        self.seconds = self._spin(QDoubleSpinBox(), 0.5, 600.0, settings.seconds, "Length",
                                  "Seconds to generate", row)
        self.seconds.setSuffix(" s")
        row.addStretch(1)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMinimumWidth(120)
        self.progress.setFormat("%p%")
        tasks.addWidget(self.progress, 1)
        self.progress_label = QLabel("")
        self.progress_label.setMinimumWidth(self.progress_label.fontMetrics().horizontalAdvance(LONGEST_OUTCOME) + 8)
        tasks.addWidget(self.progress_label)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancelRequested)
        tasks.addWidget(self.cancel_button)
        self._timer = QTimer(self)
        self._timer.timeout.connect(lambda: self.show_job(self.job))
        self.separation.currentTextChanged.connect(self._follow_separation)
        self._follow_separation(self.separation.currentText())

    def _spin(self, spin, low, high, value, label, tip, row):
        spin.setRange(low, high)
        spin.setValue(value)
        spin.setToolTip(tip)
        text = QLabel(label)
        text.setToolTip(tip)
        row.addWidget(text)
        row.addWidget(spin)
        self.labels[label] = text
        return spin

    def _follow_separation(self, mode: str) -> None:
        """Say what the controls do under this Separate-by: the first guess takes
        no steps, resamples or likelihood, so they must not look like Separate's."""
        guess_only = SEPARATION_MODES.get(mode, (None, None))[1] == 0
        self.labels[STEPS_LABEL].setText(STEPS_LABEL_NO_SEPARATE if guess_only else STEPS_LABEL)
        self.resamples.setEnabled(not guess_only)
        self.likelihood.setEnabled(not guess_only)

    def controls(self) -> TaskControls:
        """What the bar shows now: the settings a task button's job is built from."""
        return TaskControls(steps=self.steps.value(), resamples=self.resamples.value(), seed=self.seed.value(),
                            method=self.method.currentText(), likelihood=self.likelihood.currentText(),
                            seconds=float(self.seconds.value()), separation=self.separation.currentText(),
                            takes=self.takes.value())

    def apply_controls(self, values) -> None:
        """Put saved settings (a session file's) back on the controls; unknown or out-of-range ones are skipped."""
        spins = {"steps": self.steps, "resamples": self.resamples, "seed": self.seed, "seconds": self.seconds,
                 "takes": self.takes}
        combos = {"method": self.method, "likelihood": self.likelihood, "separation": self.separation}
        for name, value in values.items():
            if name in spins and isinstance(value, (int, float)) and not isinstance(value, bool):
                spin = spins[name]
                if spin.minimum() <= value <= spin.maximum():
                    spin.setValue(value if isinstance(spin, QDoubleSpinBox) else int(value))
            elif name in combos and combos[name].findText(str(value)) >= 0:
                combos[name].setCurrentText(str(value))

    def store(self, settings: AppSettings) -> None:
        """The controls into the settings (saved when the window closes)."""
        controls = self.controls()
        for name in ("steps", "resamples", "seed", "likelihood", "method", "separation", "seconds"):
            setattr(settings, name, getattr(controls, name))

    def set_state(self, engine_ready: bool, job: Job | None) -> None:
        """Task buttons work when the engine is ready and nothing runs; Cancel
        while the engine still works on the job (not once its files are being read)."""
        for button in self.task_buttons.values():
            button.setEnabled(engine_ready and job is None)
        self.cancel_button.setEnabled(job is not None and not job.answered)
        if job is None:
            self.show_job(None)

    def show_job(self, job: Job | None) -> None:
        """Show a running job's progress and time left (kept fresh by a timer while it runs)."""
        self.job = job
        if job is None:
            self._timer.stop()
            return
        if not self._timer.isActive():
            self._timer.start(REFRESH_MS)
        self.progress.setValue(int(job.fraction * 1000))
        if job.cancelling:
            text = "cancelling…"
        elif job.fraction <= 0 or job.answered:
            text = job.message
        else:
            text = format_left(job.seconds_left())
        self.progress_label.setText(f"{job.kind.capitalize()}: {text}")
        self.progress_label.setToolTip(job.message)

    def show_outcome(self, text: str, progress: int | None = None) -> None:
        """How the job ended ("Separate: done in 3 s"); ``progress`` in 0..1000 moves the bar."""
        self.show_job(None)
        if progress is not None:
            self.progress.setValue(progress)
        self.progress_label.setText(text)
