-- MSDM Studio for REAPER: the messages, as pure functions (no REAPER API here,
-- so tests run this file with a plain lua5.4 interpreter; see tests/test_osc_reaper.py).
--
-- A ReaScript cannot send UDP by itself, so requests go through the project's
-- command-line sender, `msdm osc-send`, which waits for the server's replies
-- and appends each one to a log file as a tab-separated line:
--   /msdm/progress <TAB> job <TAB> 0.5 <TAB> separating window 1/2
-- The REAPER side polls that file in a reaper.defer loop (docs/daw.md).
--
-- `msdm serve` answers only the user who runs it: each request must be signed
-- with that user's secret file (docs/osc.md, Security). osc-send reads the file
-- and signs; the scripts only tell it where the file is (config.secret_file,
-- written by install.py). The secret never appears on a command line, which
-- every user of the computer can read (ps, /proc).

local M = {}

M.STEMS = { "bass", "drums", "guitar", "piano" }

-- Typed OSC values: strings stay strings, Lua integers are int32, other numbers float32.
local function osc_type(value)
  if type(value) == "string" then return "s" end
  if math.type(value) == "integer" then return "i" end
  if type(value) == "number" then return "f" end
  error("cannot send a " .. type(value) .. " in an OSC message")
end

local function osc_text(value)
  if math.type(value) == "float" then return string.format("%.9g", value) end
  return tostring(value)
end

-- Options as key/value pairs, keys sorted so that the same request is always
-- the same message.
local function append_options(args, options)
  local keys = {}
  for key in pairs(options or {}) do keys[#keys + 1] = key end
  table.sort(keys)
  for _, key in ipairs(keys) do
    args[#args + 1] = key
    args[#args + 1] = options[key]
  end
  return args
end

function M.separate_request(job_id, mix_path, out_dir, options)
  return "/msdm/separate", append_options({ job_id, mix_path, out_dir }, options)
end

function M.generate_request(job_id, out_dir, seconds, options)
  return "/msdm/generate", append_options({ job_id, out_dir, seconds + 0.0 }, options)
end

-- given: a list of {stem, path} in the order the musician chose
function M.impute_request(job_id, out_dir, given, options)
  local args = { job_id, out_dir }
  for _, pair in ipairs(given) do
    args[#args + 1] = pair[1]
    args[#args + 1] = pair[2]
  end
  return "/msdm/impute", append_options(args, options)
end

function M.cancel_request(job_id)
  return "/msdm/cancel", { job_id }
end

-- The argument vector for `msdm osc-send` (config.msdm is a list: the program
-- and any leading arguments, e.g. { "/home/me/.venv/bin/msdm" }).
-- `msdm <command> --host H --port P [extra...] [--secret-file F]`: what every
-- command the scripts run starts with (the secret file's path, never the secret).
local function msdm_argv(config, command, extra)
  local argv = {}
  for _, word in ipairs(config.msdm) do argv[#argv + 1] = word end
  for _, word in ipairs({ command, "--host", config.host or "127.0.0.1", "--port", tostring(config.port or 9010) }) do
    argv[#argv + 1] = word
  end
  for _, word in ipairs(extra) do argv[#argv + 1] = word end
  if config.secret_file then
    argv[#argv + 1] = "--secret-file"
    argv[#argv + 1] = config.secret_file
  end
  return argv
end

function M.osc_send_argv(config, address, args, log_path)
  local types = {}
  for i, value in ipairs(args) do types[i] = osc_type(value) end
  local argv = msdm_argv(config, "osc-send", { "--timeout", tostring(config.timeout or 30) })
  if log_path then
    argv[#argv + 1] = "--log"
    argv[#argv + 1] = log_path
  end
  if #args > 0 then
    argv[#argv + 1] = "--types"
    argv[#argv + 1] = table.concat(types)
  end
  argv[#argv + 1] = address
  for _, value in ipairs(args) do argv[#argv + 1] = osc_text(value) end
  return argv
end

-- Quoting for the shell that runs the command: POSIX sh, or Windows' CreateProcess rules.
function M.quote(word, windows)
  if windows then
    -- Backslashes before a quote are doubled and the quote escaped; the word is
    -- quoted only when it holds a space or tab or is empty (then trailing backslashes double).
    local escaped = word:gsub('(\\*)"', function(slashes) return slashes .. slashes .. '\\"' end)
    if word ~= "" and not word:find("[ \t]") then return escaped end
    escaped = escaped:gsub("(\\+)$", "%1%1")
    return '"' .. escaped .. '"'
  end
  if word ~= "" and not word:find("[^%w%-%._/:=@%%+,]") then return word end
  return "'" .. word:gsub("'", "'\\''") .. "'"
end

-- The argument vector that starts `msdm serve` in the background.
function M.serve_argv(config)
  return msdm_argv(config, "serve", { "--quiet" })
end

function M.command_line(argv, windows)
  local words = {}
  for i, word in ipairs(argv) do words[i] = M.quote(word, windows) end
  return table.concat(words, " ")
end

-- One log line -> address, {fields...} (all strings).
function M.parse_reply(line)
  local fields = {}
  for field in (line .. "\t"):gmatch("([^\t]*)\t") do fields[#fields + 1] = field end
  local address = table.remove(fields, 1)
  return address, fields
end

-- What a job's log says so far: state ("waiting", "queued", "running", "done",
-- "error", "cancelled"), progress 0..1, message, and for done the stems in
-- order with their paths.
function M.job_state(lines, job_id)
  local state = { state = "waiting", progress = 0.0, message = "waiting for the server", stems = {}, paths = {},
                  takes = {} }
  for _, line in ipairs(lines) do
    local address, f = M.parse_reply(line)
    if address == "msdm-osc-send" then
      state.state, state.code, state.message = "error", f[1], f[2]
    elseif f[1] == job_id or (address == "/msdm/error" and f[1] == "") then
      if address == "/msdm/accepted" then
        state.state = "queued"
        local position = tonumber(f[2]) or 0
        state.message = position > 0 and ("queued behind " .. position .. " job(s)") or "starting"
      elseif address == "/msdm/progress" then
        state.state, state.progress, state.message = "running", tonumber(f[2]) or state.progress, f[3] or ""
      elseif address == "/msdm/done" then
        state.state, state.progress, state.message = "done", 1.0, "done"
        for i = 2, #f - 1, 2 do
          state.stems[#state.stems + 1] = f[i]
          state.paths[f[i]] = f[i + 1]
        end
      elseif address == "/msdm/take" then  -- one take of a job with takes > 1: number, seed, stem path ...
        local take = { number = tonumber(f[2]), seed = tonumber(f[3]), stems = {}, paths = {} }
        for i = 4, #f - 1, 2 do
          take.stems[#take.stems + 1] = f[i]
          take.paths[f[i]] = f[i + 1]
        end
        state.takes[#state.takes + 1] = take
      elseif address == "/msdm/error" then
        state.state, state.code, state.message = "error", f[2], f[3]
      elseif address == "/msdm/cancelled" then
        state.state, state.message = "cancelled", "cancelled"
      end
    end
  end
  return state
end

-- REAPER takes to add for a regenerate job's result: for each selected item
-- ({ stem = ..., position = seconds }), one take per job take (in order) whose source is
-- that take's file of the item's stem, starting `position - render_start` into the file
-- (the given stems were rendered from `render_start`). A job with one take has no
-- /msdm/take: its /msdm/done files are the take.
function M.take_plan(items, state, render_start)
  local takes = state.takes
  if #takes == 0 then takes = { { number = 1, seed = state.seed, paths = state.paths } } end
  local plan = {}
  for index, item in ipairs(items) do
    for _, take in ipairs(takes) do
      local path = take.paths[item.stem]
      if path then
        plan[#plan + 1] = { item = index, path = path, offset = item.position - render_start,
                            name = string.format("MSDM %s take %d%s", item.stem, take.number,
                                                 take.seed and (" (seed " .. math.floor(take.seed) .. ")") or "") }
      end
    end
  end
  return plan
end

-- Which stem a track holds, from its name ("Drums", "bass DI", "Piano L"...).
function M.stem_for_name(name, stems)
  local lower = (name or ""):lower()
  for _, stem in ipairs(stems or M.STEMS) do
    if lower:find(stem, 1, true) then return stem end
  end
  local aliases = { kick = "drums", snare = "drums", kit = "drums", perc = "drums", gtr = "guitar",
                    keys = "piano", pno = "piano", bs = "bass" }
  for word in lower:gmatch("%a+") do
    if aliases[word] then return aliases[word] end
  end
  return nil
end

-- A job id unique enough across presses and projects: prefix-time-random.
function M.job_id(prefix, now, random)
  return string.format("%s-%d-%04d", prefix, math.floor(now), math.floor(random * 10000) % 10000)
end

-- A name safe for a folder: letters, digits, - and _ only.
function M.safe_name(text)
  local name = (text or ""):gsub("[^%w%-_]+", "_"):gsub("^_+", ""):gsub("_+$", "")
  if name == "" then return "untitled" end
  return name:sub(1, 60)
end

return M
