"""Messages a musician can act on, shown inline above the lanes (never a modal
box that blocks playback). The bar keeps every message it showed, newest last."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton, QWidget

LEVELS = ("info", "warning", "error")


class MessageBar(QFrame):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.messages: list[tuple[str, str]] = []   # (level, text), newest last
        self.setObjectName("messageBar")
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 4, 4, 4)
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row.addWidget(self.label, 1)
        close = QToolButton()
        close.setText("✕")
        close.clicked.connect(self.hide)
        row.addWidget(close)
        self.hide()

    def show_message(self, text: str, level: str = "info") -> None:
        if level not in LEVELS:
            raise ValueError(f"message level {level!r} is not one of {', '.join(LEVELS)}")
        self.messages.append((level, text))
        self.label.setText(text)
        self.setProperty("level", level)  # the style sheet colours the bar by level
        self.style().unpolish(self)
        self.style().polish(self)
        self.show()
