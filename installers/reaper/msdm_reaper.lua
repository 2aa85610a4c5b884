-- MSDM Studio for REAPER: the REAPER side (render or locate audio, start a job
-- through `msdm osc-send`, poll it in a reaper.defer loop with a progress window,
-- import the returned stems as new tracks in a folder track, in one undo block).
-- The actions "MSDM: separate selected item" and "MSDM: generate accompaniment
-- for selected items" are two small files that call run_separate / run_generate.

local here = ({ reaper.get_action_context() })[2]:match("^(.*[/\\])") or ""
package.path = here .. "?.lua;" .. package.path
local osc = dofile(here .. "msdm_osc.lua")
local ok, user = pcall(dofile, here .. "msdm_config.lua")  -- written by install.py
local config = {
  msdm = { "msdm" },                 -- the msdm program (install.py writes its full path)
  host = "127.0.0.1", port = 9010,   -- where `msdm serve` listens
  secret_file = nil,                 -- the secret requests are signed with (nil: msdm's default; install.py writes it)
  output_root = nil,                 -- nil: ask the server (/msdm/root)
  options = {},                      -- e.g. { steps = 50 } for quicker, rougher results
  auto_start = true,                 -- start `msdm serve` in the background when it is not running
  timeout = 30,
}
if ok and type(user) == "table" then for k, v in pairs(user) do config[k] = v end end

local WINDOWS = reaper.GetOS():find("Win") ~= nil
local SEP = WINDOWS and "\\" or "/"
local M = {}

local function message(text, title)
  reaper.ShowMessageBox(text, title or "MSDM Studio", 0)
end

-- Run `msdm osc-send` and wait for it (short queries only: REAPER waits meanwhile,
-- so the client gives up after 2 s of silence): returns ok, output.
local function query(address, args)
  local quick = { msdm = config.msdm, host = config.host, port = config.port, timeout = 2,
                  secret_file = config.secret_file }
  local line = osc.command_line(osc.osc_send_argv(quick, address, args or {}), WINDOWS)
  if not WINDOWS then
    -- The line is quoted for POSIX sh (osc.quote). reaper.ExecProcess is not documented to use
    -- a shell (reascripthelp: "Executes command line"), and is reported to split the line
    -- itself, with no backslash escapes (TeamAudio/reaspeech PR #187), so run it through
    -- /bin/sh like os.execute below: io.popen, whose close() gives the exit status (Lua 5.4
    -- manual, io.popen / file:close).
    local pipe = io.popen(line .. " 2>/dev/null", "r")
    if not pipe then return false, "could not run " .. config.msdm[1] end
    local output = pipe:read("a") or ""
    return pipe:close() == true, output
  end
  local result = reaper.ExecProcess(line, 10000)
  if not result then return false, "could not run " .. config.msdm[1] end
  -- reascripthelp ExecProcess: "the return value, a newline, and then the output"
  local code, output = result:match("^(%-?%d+)\r?\n(.*)$")
  return tonumber(code) == 0, output or result
end

-- Start a job in the background: osc-send appends the replies to `log_path`.
local function start_background(address, args, log_path)
  local argv = osc.osc_send_argv(config, address, args, log_path)
  local line = osc.command_line(argv, WINDOWS)
  if WINDOWS then
    reaper.ExecProcess(line, -1)              -- -1: do not wait
  else
    os.execute(line .. " >/dev/null 2>&1 &")
  end
end

local function read_lines(path)
  local lines, file = {}, io.open(path, "r")
  if not file then return lines end
  for line in file:lines() do lines[#lines + 1] = line end
  file:close()
  return lines
end

-- Make sure a server answers; start one if allowed. Calls `after(root)` when ready.
local function with_server(after)
  local function root_of(output)
    local _, fields = osc.parse_reply((output or ""):match("[^\r\n]+") or "")
    return fields[1]
  end
  local up, output = query("/msdm/root")
  if up then return after(config.output_root or root_of(output)) end
  if not config.auto_start then
    return message("msdm serve is not running.\n\nStart it in a terminal with:  msdm serve\n\n" .. (output or ""))
  end
  local line = osc.command_line(osc.serve_argv(config), WINDOWS)
  if WINDOWS then reaper.ExecProcess(line, -1) else os.execute(line .. " >/dev/null 2>&1 &") end
  local started, last = reaper.time_precise(), 0
  local function wait()
    if reaper.time_precise() - last < 1 then return reaper.defer(wait) end  -- ask once a second
    last = reaper.time_precise()
    local ready, out = query("/msdm/root")
    if ready then return after(config.output_root or root_of(out)) end
    if reaper.time_precise() - started > 60 then
      return message("msdm serve did not start within a minute. Run `msdm serve` in a terminal to see why.")
    end
    reaper.defer(wait)
  end
  reaper.defer(wait)
end

-- Progress window and polling; `on_done(state)` runs when the job is done.
local function follow(job_id, log_path, title, on_done)
  gfx.init("MSDM: " .. title, 420, 90)
  local function loop()
    local state = osc.job_state(read_lines(log_path), job_id)
    gfx.set(0.12, 0.12, 0.12) gfx.rect(0, 0, gfx.w, gfx.h, 1)
    gfx.set(0.3, 0.7, 0.9) gfx.rect(10, 40, math.floor((gfx.w - 20) * state.progress), 16, 1)
    gfx.set(0.9, 0.9, 0.9) gfx.x, gfx.y = 10, 12
    gfx.drawstr(string.format("%s  %3d%%   (close this window to cancel)", state.message, math.floor(state.progress * 100)))
    gfx.update()
    if state.state == "done" then
      gfx.quit()
      return on_done(state)
    elseif state.state == "error" then
      gfx.quit()
      return message("The job failed (" .. (state.code or "?") .. "):\n\n" .. (state.message or ""))
    elseif state.state == "cancelled" then
      return gfx.quit()
    end
    if gfx.getchar() < 0 then  -- window closed (getchar -1): ask the server to cancel the job and stop polling
      local address, args = osc.cancel_request(job_id)
      start_background(address, args, nil)
      gfx.quit()
      return
    end
    reaper.defer(loop)
  end
  reaper.defer(loop)
end

-- Render settings we change, saved so the musician's own are restored. Keys and values as
-- documented for GetSetProjectInfo / GetSetProjectInfo_String (reaper_plugin_functions.h,
-- REAPER 7.27 SDK). RENDER_ADDTOPROJ, RENDER_NORMALIZE and RENDER_FORMAT2 are reset too:
-- left as the musician set them, the render could add its files to the project as new
-- tracks (&1), normalize the given stems (changing their balance), or write a second file
-- per target that would then appear in RENDER_TARGETS.
local RENDER_KEYS = { "RENDER_SETTINGS", "RENDER_BOUNDSFLAG", "RENDER_STARTPOS", "RENDER_ENDPOS", "RENDER_TAILFLAG",
                      "RENDER_SRATE", "RENDER_CHANNELS", "RENDER_ADDTOPROJ", "RENDER_NORMALIZE" }
local RENDER_STRINGS = { "RENDER_FILE", "RENDER_PATTERN", "RENDER_FORMAT", "RENDER_FORMAT2" }

local function render(settings, start_pos, end_pos, folder, pattern)
  local saved, saved_s = {}, {}
  for _, key in ipairs(RENDER_KEYS) do saved[key] = reaper.GetSetProjectInfo(0, key, 0, false) end
  for _, key in ipairs(RENDER_STRINGS) do saved_s[key] = select(2, reaper.GetSetProjectInfo_String(0, key, "", false)) end
  reaper.GetSetProjectInfo(0, "RENDER_SETTINGS", settings, true)
  reaper.GetSetProjectInfo(0, "RENDER_BOUNDSFLAG", 0, true)      -- custom time bounds
  reaper.GetSetProjectInfo(0, "RENDER_STARTPOS", start_pos, true)
  reaper.GetSetProjectInfo(0, "RENDER_ENDPOS", end_pos, true)
  reaper.GetSetProjectInfo(0, "RENDER_TAILFLAG", 0, true)        -- no tails: every file the same length
  reaper.GetSetProjectInfo(0, "RENDER_SRATE", 0, true)           -- the project's rate
  reaper.GetSetProjectInfo(0, "RENDER_CHANNELS", 2, true)
  reaper.GetSetProjectInfo(0, "RENDER_ADDTOPROJ", 0, true)       -- do not add the files to the project
  reaper.GetSetProjectInfo(0, "RENDER_NORMALIZE", 0, true)       -- keep the levels as they are
  reaper.GetSetProjectInfo_String(0, "RENDER_FILE", folder, true)
  reaper.GetSetProjectInfo_String(0, "RENDER_PATTERN", pattern, true)
  reaper.GetSetProjectInfo_String(0, "RENDER_FORMAT", "evaw", true)  -- WAV, default settings
  reaper.GetSetProjectInfo_String(0, "RENDER_FORMAT2", "", true)     -- "" disables the secondary format
  -- 42230 = "File: Render project, using the most recent render settings, auto-close render
  -- dialog" (the same id and name in many public ReaScripts, e.g. MPL's glue scripts; 41824 is
  -- the variant that leaves the dialog open, per the action list in mespotine/ultraschall-and-
  -- reaper-docs). "Most recent render settings" are the project's, set just above.
  reaper.Main_OnCommand(42230, 0)
  local _, targets = reaper.GetSetProjectInfo_String(0, "RENDER_TARGETS", "", false)
  for key, value in pairs(saved) do reaper.GetSetProjectInfo(0, key, value, true) end
  for key, value in pairs(saved_s) do reaper.GetSetProjectInfo_String(0, key, value, true) end
  local files = {}
  for path in (targets or ""):gmatch("[^;]+") do files[#files + 1] = path end
  return files
end

local AUDIO_SOURCES = { WAVE = true, FLAC = true, MP3 = true, VORBIS = true, OPUS = true, AIFF = true, WAVPACK = true }

-- The file to separate for an item, and where the stems go: the take's source
-- file when it is plain audio (then the stems line up with it through the same
-- offset and rate), else a render of the item.
local function locate_audio(item, scratch)
  local take = reaper.GetActiveTake(item)
  if take and not reaper.TakeIsMIDI(take) then
    local source = reaper.GetMediaItemTake_Source(take)
    local kind = reaper.GetMediaSourceType(source, "")
    local path = reaper.GetMediaSourceFileName(source, "")
    if AUDIO_SOURCES[kind] and path ~= "" then
      return path, reaper.GetMediaItemTakeInfo_Value(take, "D_STARTOFFS"), reaper.GetMediaItemTakeInfo_Value(take, "D_PLAYRATE")
    end
  end
  local position = reaper.GetMediaItemInfo_Value(item, "D_POSITION")
  local length = reaper.GetMediaItemInfo_Value(item, "D_LENGTH")
  reaper.SelectAllMediaItems(0, false)
  reaper.SetMediaItemSelected(item, true)
  local files = render(32, position, position + length, scratch, "item")  -- 32: selected media items
  return files[1], 0.0, 1.0
end

-- New tracks in a folder under `after_track`, one per stem, each item at `position`.
local function import(state, names, folder_name, after_track, position, length, offset, rate)
  reaper.Undo_BeginBlock()
  reaper.PreventUIRefresh(1)
  local index = after_track and math.floor(reaper.GetMediaTrackInfo_Value(after_track, "IP_TRACKNUMBER")) or reaper.CountTracks(0)
  reaper.InsertTrackAtIndex(index, true)
  local folder = reaper.GetTrack(0, index)
  reaper.GetSetMediaTrackInfo_String(folder, "P_NAME", folder_name, true)
  reaper.SetMediaTrackInfo_Value(folder, "I_FOLDERDEPTH", 1)
  local last
  for n, stem in ipairs(names) do
    reaper.InsertTrackAtIndex(index + n, true)
    local track = reaper.GetTrack(0, index + n)
    reaper.GetSetMediaTrackInfo_String(track, "P_NAME", stem, true)
    local item = reaper.AddMediaItemToTrack(track)
    local take = reaper.AddTakeToMediaItem(item)
    reaper.SetMediaItemTake_Source(take, reaper.PCM_Source_CreateFromFile(state.paths[stem]))
    reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", stem, true)
    reaper.SetMediaItemTakeInfo_Value(take, "D_STARTOFFS", offset or 0)
    reaper.SetMediaItemTakeInfo_Value(take, "D_PLAYRATE", rate or 1)
    reaper.SetMediaItemInfo_Value(item, "D_POSITION", position)
    reaper.SetMediaItemInfo_Value(item, "D_LENGTH", length)
    last = track
  end
  if last then reaper.SetMediaTrackInfo_Value(last, "I_FOLDERDEPTH", -1) end
  reaper.PreventUIRefresh(-1)
  reaper.TrackList_AdjustWindows(false)
  reaper.UpdateArrange()
  reaper.Undo_EndBlock("MSDM: " .. folder_name, -1)
end

local function job_folder(root, kind, job_id)
  local _, project = reaper.EnumProjects(-1, "")
  local name = osc.safe_name(reaper.GetProjectName(0, "") ~= "" and reaper.GetProjectName(0, "") or project)
  return table.concat({ root, "reaper", name, kind .. "-" .. job_id }, SEP)
end

function M.run_separate()
  local item = reaper.GetSelectedMediaItem(0, 0)
  if not item then return message("Select the item to separate first (a bounced mix, or any audio item).") end
  with_server(function(root)
    local job_id = osc.job_id("sep", os.time(), math.random())
    local out_dir = job_folder(root, "separate", job_id)
    reaper.RecursiveCreateDirectory(out_dir, 0)
    local mix, offset, rate = locate_audio(item, out_dir .. SEP .. "render")
    if not mix then return message("Could not find or render the audio of the selected item.") end
    local track = reaper.GetMediaItem_Track(item)
    local position = reaper.GetMediaItemInfo_Value(item, "D_POSITION")
    local length = reaper.GetMediaItemInfo_Value(item, "D_LENGTH")
    local options = {}
    for k, v in pairs(config.options) do options[k] = v end
    local log_path = out_dir .. SEP .. "replies.log"
    local address, args = osc.separate_request(job_id, mix, out_dir .. SEP .. "stems", options)
    start_background(address, args, log_path)
    follow(job_id, log_path, "separating", function(state)
      import(state, state.stems, "MSDM stems", track, position, length, offset, rate)
    end)
  end)
end

function M.run_generate()
  local count = reaper.CountSelectedMediaItems(0)
  if count == 0 then return message("Select the items you have (e.g. a drum take) first.") end
  -- The given stems: one per track of the selected items, named after the track.
  local tracks, given_tracks, start_pos, end_pos = {}, {}, math.huge, -math.huge
  for i = 0, count - 1 do
    local item = reaper.GetSelectedMediaItem(0, i)
    local position = reaper.GetMediaItemInfo_Value(item, "D_POSITION")
    start_pos = math.min(start_pos, position)
    end_pos = math.max(end_pos, position + reaper.GetMediaItemInfo_Value(item, "D_LENGTH"))
    local track = reaper.GetMediaItem_Track(item)
    if not tracks[track] then
      local _, name = reaper.GetTrackName(track)
      local stem = osc.stem_for_name(name)
      if not stem then
        -- captions_csv is comma-separated (GetUserInputs, reaper_plugin_functions.h), so the
        -- caption itself must hold no comma.
        local ok_input, answer = reaper.GetUserInputs("MSDM: which stem is track '" .. name .. "'?", 1,
                                                       "Stem (bass/drums/guitar/piano)", "drums")
        if not ok_input then return end
        stem = osc.stem_for_name(answer)
        if not stem then return message("'" .. answer .. "' is not one of bass, drums, guitar, piano.") end
      end
      tracks[track] = stem
      given_tracks[#given_tracks + 1] = track
    end
  end
  with_server(function(root)
    local job_id = osc.job_id("gen", os.time(), math.random())
    local out_dir = job_folder(root, "accompaniment", job_id)
    reaper.RecursiveCreateDirectory(out_dir, 0)
    -- Render each track of the selection over the same span, so the given stems line up.
    local selected = {}
    for i = 0, reaper.CountTracks(0) - 1 do
      local t = reaper.GetTrack(0, i)
      selected[t] = reaper.IsTrackSelected(t)
      reaper.SetTrackSelected(t, tracks[t] ~= nil)
    end
    local files = render(2, start_pos, end_pos, out_dir .. SEP .. "given", "$tracknumber")  -- 2: stems of selected tracks
    for t, was in pairs(selected) do reaper.SetTrackSelected(t, was) end
    local given, seen = {}, {}
    for _, track in ipairs(given_tracks) do
      local number = math.floor(reaper.GetMediaTrackInfo_Value(track, "IP_TRACKNUMBER"))
      for _, path in ipairs(files) do
        if path:match("[/\\]0*" .. number .. "%.wav$") and not seen[tracks[track]] then
          given[#given + 1] = { tracks[track], path }
          seen[tracks[track]] = true
        end
      end
    end
    if #given == 0 then return message("Rendering the selected tracks gave no files; check the render settings.") end
    local options = { seed = math.random(0, 2 ^ 31 - 1) }  -- a new part on every press
    for k, v in pairs(config.options) do options[k] = v end
    local log_path = out_dir .. SEP .. "replies.log"
    local address, args = osc.impute_request(job_id, out_dir .. SEP .. "parts", given, options)
    start_background(address, args, log_path)
    follow(job_id, log_path, "generating the other parts", function(state)
      local parts = {}
      for _, stem in ipairs(state.stems) do if stem ~= "mix" then parts[#parts + 1] = stem end end
      import(state, parts, string.format("MSDM accompaniment (seed %d)", options.seed), given_tracks[#given_tracks],
             start_pos, end_pos - start_pos, 0, 1)
    end)
  end)
end

-- The result of a regenerate job as REAPER takes of the selected items (one undo
-- block): the newest take plays, the item's own take stays, so REAPER's take tools
-- (switch, explode, crop, comp with takes lanes) work on them.
function M.add_result_takes(items, state, render_start)
  reaper.Undo_BeginBlock()
  reaper.PreventUIRefresh(1)
  local last = {}
  for _, step in ipairs(osc.take_plan(items, state, render_start)) do
    local item = items[step.item].item
    local take = reaper.AddTakeToMediaItem(item)
    reaper.SetMediaItemTake_Source(take, reaper.PCM_Source_CreateFromFile(step.path))
    reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", step.name, true)
    reaper.SetMediaItemTakeInfo_Value(take, "D_STARTOFFS", step.offset)
    last[item] = take
  end
  for _, take in pairs(last) do reaper.SetActiveTake(take) end
  reaper.PreventUIRefresh(-1)
  reaper.UpdateArrange()
  reaper.Undo_EndBlock("MSDM: regenerate as takes", -1)
end

-- "MSDM: regenerate selected items as takes": the selected items' stems (their tracks'
-- names) are written anew inside the time selection (or over the items), every other
-- track named for a stem is given; config.takes (default 3) takes arrive as REAPER takes.
function M.run_regenerate()
  local count = reaper.CountSelectedMediaItems(0)
  if count == 0 then return message("Select the items to regenerate (e.g. the bass item) first.") end
  local items, start_pos, end_pos = {}, math.huge, -math.huge
  for i = 0, count - 1 do
    local item = reaper.GetSelectedMediaItem(0, i)
    local position = reaper.GetMediaItemInfo_Value(item, "D_POSITION")
    local _, name = reaper.GetTrackName(reaper.GetMediaItem_Track(item))
    local stem = osc.stem_for_name(name)
    if not stem then return message("Name the track of each selected item after its stem (bass, drums...).") end
    items[#items + 1] = { item = item, stem = stem, position = position }
    start_pos = math.min(start_pos, position)
    end_pos = math.max(end_pos, position + reaper.GetMediaItemInfo_Value(item, "D_LENGTH"))
  end
  local sel_start, sel_end = reaper.GetSet_LoopTimeRange(false, false, 0, 0, false)
  local range_start, range_end = start_pos, end_pos
  if sel_end > sel_start then range_start, range_end = math.max(sel_start, start_pos), math.min(sel_end, end_pos) end
  if range_end <= range_start then return message("The time selection does not overlap the selected items.") end
  with_server(function(root)
    local job_id = osc.job_id("regen", os.time(), math.random())
    local out_dir = job_folder(root, "regenerate", job_id)
    reaper.RecursiveCreateDirectory(out_dir, 0)
    local tracks, selected = {}, {}
    for i = 0, reaper.CountTracks(0) - 1 do
      local t = reaper.GetTrack(0, i)
      local _, name = reaper.GetTrackName(t)
      selected[t] = reaper.IsTrackSelected(t)
      tracks[t] = osc.stem_for_name(name)
      reaper.SetTrackSelected(t, tracks[t] ~= nil)
    end
    local files = render(2, start_pos, end_pos, out_dir .. SEP .. "given", "$tracknumber")
    for t, was in pairs(selected) do reaper.SetTrackSelected(t, was) end
    local given, seen, regenerate = {}, {}, {}
    for t, stem in pairs(tracks) do
      local number = math.floor(reaper.GetMediaTrackInfo_Value(t, "IP_TRACKNUMBER"))
      for _, path in ipairs(files) do
        if path:match("[/\\]0*" .. number .. "%.wav$") and not seen[stem] then
          given[#given + 1] = { stem, path }
          seen[stem] = true
        end
      end
    end
    for _, entry in ipairs(items) do
      if not seen[entry.stem] then return message("Rendering gave no file for the " .. entry.stem .. " track.") end
      regenerate[#regenerate + 1] = entry.stem
    end
    local options = { seed = math.random(0, 2 ^ 31 - 1), takes = config.takes or 3,
                      range = string.format("%.6f:%.6f", range_start - start_pos, range_end - start_pos),
                      regenerate = table.concat(regenerate, ",") }
    for k, v in pairs(config.options) do options[k] = v end
    local log_path = out_dir .. SEP .. "replies.log"
    local address, args = osc.impute_request(job_id, out_dir .. SEP .. "takes", given, options)
    start_background(address, args, log_path)
    follow(job_id, log_path, "regenerating", function(state)
      state.seed = options.seed
      M.add_result_takes(items, state, start_pos)
    end)
  end)
end

return M
