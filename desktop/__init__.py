"""MSDM Studio desktop app (`msdm app`): a PySide6 window over the OSC engine (`msdm serve`).

Pure modules (no Qt): mixer, session, export, spectrogram, osc_messages.
Qt modules: engine_client, supervisor, audio_output, lane_widget, window, app.
"""
