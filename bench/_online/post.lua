-- wrk script for bench/online.py: POST pre-generated JSON bodies, rotating through them.
--
-- Usage: wrk -s post.lua <url> -- <bodies file> <path>
--   <bodies file>  one JSON request body per line (rotated, so no single hot key)
--   <path>         request path, e.g. /v1/predict/fraud
-- Every answer's first "source" field (hybridserve says where each prediction came from) is
-- counted; non-200 answers count as "http_<status>", answers without one as "-".
-- At the end, done() prints one machine-readable line:
--   WRK_RESULT {"requests": ..., "duration_us": ..., "p50_us": ..., "sources": {...}}

local bodies = {}
local index = 0
sources = {}   -- global: read by done() through thread:get
id = 0         -- set per thread by setup()

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  threads[#threads + 1] = thread
end

function init(args)
  local file = args[1]
  local path = args[2] or "/"
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(file) do
    if #line > 0 then
      bodies[#bodies + 1] = wrk.format("POST", path, headers, line)
    end
  end
  if #bodies == 0 then
    error("no request bodies in " .. file)
  end
  index = (id * 7919) % #bodies  -- each thread starts at a different offset
end

function request()
  index = index % #bodies + 1
  return bodies[index]
end

function response(status, headers, body)
  local source
  if status ~= 200 then
    source = "http_" .. status
  else
    source = string.match(body, '"source"%s*:%s*"([^"]*)"') or "-"
  end
  sources[source] = (sources[source] or 0) + 1
end

function done(summary, latency, _requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for name, n in pairs(thread:get("sources") or {}) do
      counts[name] = (counts[name] or 0) + n
    end
  end
  local parts = {}
  for name, n in pairs(counts) do
    parts[#parts + 1] = string.format('"%s": %d', name, n)
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "non_2xx": %d, "sources": {%s}}\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean,
    e.connect, e.read, e.write, e.timeout, e.status, table.concat(parts, ", ")))
end
