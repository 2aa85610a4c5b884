-- @description MSDM: regenerate selected items as takes
-- @about Writes the selected items' parts (their tracks named bass, drums, guitar or piano)
--   anew inside the time selection with MSDM Studio (`msdm serve`), hearing every other
--   stem track, and adds each result as a REAPER take of the item (3 takes; set `takes`
--   in msdm_config.lua), in one undo block. Setup: docs/daw.md.
local here = ({ reaper.get_action_context() })[2]:match("^(.*[/\\])") or ""
dofile(here .. "msdm_reaper.lua").run_regenerate()
