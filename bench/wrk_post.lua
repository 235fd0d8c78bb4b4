-- wrk script of the serving load test (bench/serve_load.py): POSTs JSON bodies read from a file, one body per
-- request, rotating through the file, and prints the run's figures as one JSON line for the Python side.
--
--   wrk -t1 -cN -dS --timeout 30s -s bench/wrk_post.lua http://127.0.0.1:PORT/v1/embeddings -- BODIES [PAUSE_MS]
--
-- BODIES: one complete request body per line (JSON, so no raw newline inside). PAUSE_MS (default 0): each
-- connection waits that long after an answer before sending again; 0 is the plain closed loop, a long pause
-- with one connection sends lone requests to an idle server.
-- The requests are built once in init(): building them in request() would make the client cost more CPU,
-- and the client must leave the server's CPU alone. No response() is defined, so wrk does not parse bodies.

local requests = {}
local next_index = 1
local pause_ms = 0
local thread_count = 0

function setup(thread)
  -- each thread starts at its own place in the file, so threads do not send the same texts in step
  thread:set("thread_id", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  local path = args[1]
  if path == nil then
    error("wrk_post.lua needs the bodies file: wrk ... URL -- BODIES [PAUSE_MS]")
  end
  pause_ms = tonumber(args[2] or "0")
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(path) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", nil, headers, line)
    end
  end
  if #requests == 0 then
    error("no request bodies in " .. path)
  end
  next_index = ((thread_id or 0) * 7919) % #requests + 1
  if pause_ms <= 0 then
    -- without delay() wrk sends the next request as soon as the answer is read; with it, each request would
    -- wait for a zero-length timer turn of the event loop
    delay = nil
  end
end

function delay()
  return pause_ms
end

function request()
  local r = requests[next_index]
  next_index = next_index % #requests + 1
  return r
end

function done(summary, latency, requests_stats)
  local p = {}
  for _, q in ipairs({ 50, 90, 95, 99, 99.9 }) do
    p[#p + 1] = string.format('"p%s": %d', tostring(q), latency:percentile(q))
  end
  local e = summary.errors
  io.write(string.format(
    'SERVE_LOAD_JSON {"client": "wrk", "duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "max": %d, "mean": %.1f, "stdev": %.1f, %s}}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(p, ", ")))
end
