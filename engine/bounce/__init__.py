"""`msdm bounce`: whole catalogues. Inputs and patterns (inputs), the manifest that
makes re-runs resume (manifest), songs sharing network calls (batching), the bouncer
itself (bouncer) and its command line (command)."""
