-- wrk script for bench/online.py: POST pre-generated JSON bodies, rotating through them.
--
-- Usage: wrk -s post.lua <url> -- <bodies file> <path>
--   <bodies file>  one JSON request body per line (rotated, so no single hot key)
--   <path>         request path, e.g. /v1/predict/fraud
-- At the end, done() prints one machine-readable line:
--   WRK_RESULT {"requests": ..., "duration_us": ..., "p50_us": ..., ...}

local requests = {}
local index = 0
local counter = 0

function init(args)
  local file = args[1]
  local path = args[2] or "/"
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(file) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", path, headers, line)
    end
  end
  if #requests == 0 then
    error("no request bodies in " .. file)
  end
  -- Each wrk thread starts at a different offset of the shared list.
  counter = counter + 1
  index = (counter * 7919) % #requests
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function done(summary, latency, _requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "non_2xx": %d}\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean,
    e.connect, e.read, e.write, e.timeout, e.status))
end
