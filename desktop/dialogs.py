"""The two dialogs: engine settings and export. Each reads and writes an
AppSettings; the window acts on the result."""

from __future__ import annotations

from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog,
                               QFormLayout, QHBoxLayout, QLineEdit, QPushButton, QRadioButton, QSpinBox,
                               QVBoxLayout, QWidget)

from .export import DEFAULT_PATTERN
from .settings import AppSettings

BITS_LABELS = {"16": "16-bit", "24": "24-bit", "32f": "32-bit float"}


def _browse_row(edit: QLineEdit, pick) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(edit, 1)
    button = QPushButton("Browse…")
    button.clicked.connect(pick)
    layout.addWidget(button)
    return row


class SettingsDialog(QDialog):
    def __init__(self, settings: AppSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Engine settings")
        self.local = QRadioButton("Start a local engine (recommended)")
        self.remote = QRadioButton("Connect to a running server (msdm serve)")
        group = QButtonGroup(self)
        group.addButton(self.local)
        group.addButton(self.remote)
        (self.remote if settings.engine_mode == "remote" else self.local).setChecked(True)
        self.host = QLineEdit(settings.remote_host)
        self.port = QSpinBox()
        self.port.setRange(1, 65535)
        self.port.setValue(settings.remote_port)
        self.model = QLineEdit(settings.model)
        self.model.setPlaceholderText("the shipped default model")
        self.backend = QComboBox()
        self.backend.addItems(["torch", "onnx"])
        self.backend.setCurrentText(settings.backend)
        self.root = QLineEdit(settings.output_root)
        form = QFormLayout()
        form.addRow(self.local)
        form.addRow("Model file", _browse_row(self.model, self._pick_model))
        form.addRow("Backend", self.backend)
        form.addRow(self.remote)
        form.addRow("Host", self.host)
        form.addRow("Port", self.port)
        form.addRow("Work folder", _browse_row(self.root, self._pick_root))
        self.root.setToolTip("Jobs write here; for a remote server it must be the server's --output-root, "
                             "seen at the same path on this computer")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def _pick_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model file", self.model.text(), "Models (*.safetensors)")
        if path:
            self.model.setText(path)

    def _pick_root(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Work folder", self.root.text())
        if path:
            self.root.setText(path)

    def apply(self, settings: AppSettings) -> None:
        settings.engine_mode = "remote" if self.remote.isChecked() else "local"
        settings.remote_host = self.host.text().strip() or "127.0.0.1"
        settings.remote_port = self.port.value()
        settings.model = self.model.text().strip()
        settings.backend = self.backend.currentText()
        settings.output_root = self.root.text().strip() or settings.output_root


class ExportDialog(QDialog):
    def __init__(self, settings: AppSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export stems")
        self.folder = QLineEdit(settings.export_folder)
        self.format = QComboBox()
        self.format.addItems(["wav", "flac"])
        self.format.setCurrentText(settings.export_format)
        self.bits = QComboBox()
        for key, label in BITS_LABELS.items():
            self.bits.addItem(label, key)
        self.bits.setCurrentIndex(list(BITS_LABELS).index(settings.export_bits)
                                  if settings.export_bits in BITS_LABELS else 1)
        self.pattern = QLineEdit(settings.export_pattern or DEFAULT_PATTERN)
        self.pattern.setToolTip("{song}: the mix's file name, {stem}: the lane, {index}: 1, 2, 3…")
        self.include_mix = QCheckBox("Include the mix lane")
        form = QFormLayout()
        form.addRow("Folder", _browse_row(self.folder, self._pick_folder))
        form.addRow("Format", self.format)
        form.addRow("Samples", self.bits)
        form.addRow("File names", self.pattern)
        form.addRow(self.include_mix)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Export")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def _pick_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Export folder", self.folder.text())
        if path:
            self.folder.setText(path)

    def apply(self, settings: AppSettings) -> None:
        settings.export_folder = self.folder.text().strip()
        settings.export_format = self.format.currentText()
        settings.export_bits = self.bits.currentData()
        settings.export_pattern = self.pattern.text().strip()
