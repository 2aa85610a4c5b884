"""Audio: files in and out (files), overlapping windows (windows) and the streaming
pipeline that runs a task over a whole file (pipeline)."""
