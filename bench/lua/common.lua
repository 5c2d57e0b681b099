-- Shared by every scenario. Arguments after `--`: token, consumer key, card count, card prefix,
-- number length, and a scenario-specific extra (the floor's path).
-- Each wrk thread has its own Lua state: counters are thread globals, summed in done().

local threads = {}
COUNTERS = { "ok", "http_errors", "sent" }

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

function init(args)
  token, consumer_key = args[1], args[2]
  card_count, card_prefix, number_length = tonumber(args[3]), args[4], tonumber(args[5])
  extra = args[6]
  ok, http_errors, sent = 0, 0, 0
  first_error = ""
  math.randomseed(os.time() * 100 + thread_id)
  json_headers = { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }
  auth_headers = { ["Authorization"] = "Bearer " .. token }
  if scenario_init then scenario_init() end
end

-- A random one of the seeded cards: the prefix, then its index zero-padded.
function random_card()
  local digits = number_length - #card_prefix
  return card_prefix .. string.format("%0" .. digits .. "d", math.random(0, card_count - 1))
end

function send(method, path, headers, body)
  sent = sent + 1
  return wrk.format(method, path, headers, body)
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
    if on_success then on_success(body) end
  else
    http_errors = http_errors + 1
    if first_error == "" then first_error = status .. " " .. string.sub(body or "", 1, 200) end
  end
end

local function json_string(s)
  return '"' .. s:gsub("%c", " "):gsub("\\", "\\\\"):gsub('"', '\\"') .. '"'
end

function done(summary, latency, requests)
  local totals = {}
  for _, name in ipairs(COUNTERS) do totals[name] = 0 end
  for _, name in ipairs(SCENARIO_COUNTERS or {}) do totals[name] = 0 end
  local sample = ""
  for _, thread in ipairs(threads) do
    for name in pairs(totals) do totals[name] = totals[name] + (thread:get(name) or 0) end
    if sample == "" then sample = thread:get("first_error") or "" end
  end
  local e = summary.errors
  local fields = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_us":%d', summary.duration),
    string.format('"p50_us":%d', latency:percentile(50)),
    string.format('"p99_us":%d', latency:percentile(99)),
    string.format('"socket_errors":%d', e.connect + e.read + e.write + e.timeout),
    '"first_error":' .. json_string(sample),
  }
  for name, value in pairs(totals) do
    table.insert(fields, string.format('"%s":%d', name, value))
  end
  io.write("RESULT {" .. table.concat(fields, ",") .. "}\n")
end
