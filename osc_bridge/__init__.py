"""OSC bridge: `msdm serve` (DAWs and OSC tools drive the engine) and `msdm osc-send`."""
