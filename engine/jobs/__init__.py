"""Jobs: what a request to the engine is and how it runs, for every front end (CLI, OSC, bounce, app)."""
