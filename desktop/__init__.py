"""MSDM Studio desktop app (`msdm app`): a PySide6 window over the OSC engine (`msdm serve`).

Pure modules (no Qt): jobs, lane_state, session, mixer, export, spectrogram,
waveform, osc_messages.
Qt modules: window (the composition) of task_bar, transport, ruler, lanes
(lane_widget), message_bar; engine_link (engine_client, supervisor); loader
(reads files on a worker thread); audio_output; settings, dialogs; app.
"""
