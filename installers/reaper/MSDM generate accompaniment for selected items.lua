-- @description MSDM: generate accompaniment for selected items
-- @about Takes the selected items (e.g. a drum take; each track named after its stem) and
--   generates the other parts that fit them with MSDM Studio (`msdm serve`), as new tracks
--   in a folder track aligned to the selection, in one undo block. Setup: docs/daw.md.
local here = ({ reaper.get_action_context() })[2]:match("^(.*[/\\])") or ""
dofile(here .. "msdm_reaper.lua").run_generate()
