-- @description MSDM: separate selected item
-- @about Separates the selected item (e.g. a bounced mix) into bass, drums, guitar and piano
--   with MSDM Studio (`msdm serve`), and adds the stems as new tracks in a folder track,
--   aligned to the item, in one undo block. Setup: docs/daw.md.
local here = ({ reaper.get_action_context() })[2]:match("^(.*[/\\])") or ""
dofile(here .. "msdm_reaper.lua").run_separate()
