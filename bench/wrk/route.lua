-- One request shape for wrk, set from the environment by bench/http_bench.py:
--   BENCH_METHOD  GET (default) or POST
--   BENCH_TOKEN   bearer token; no Authorization header when unset or empty
--   BENCH_BODY    request body, sent as application/json; POST with no body
--                 sends "Content-Length: 0"
--   BENCH_ADDRS   optional "host:port,host:port,...": wrk's threads connect to these
--                 in turn (thread 1 to the first, ...) instead of the URL's host, to
--                 spread one load over several servers; the URL still gives the path
-- At the end it prints one line, "WRK_RESULT {json}", with exact figures
-- (latency in microseconds) next to wrk's own --latency report.
local method = os.getenv("BENCH_METHOD") or "GET"
local token = os.getenv("BENCH_TOKEN") or ""
local body = os.getenv("BENCH_BODY")

wrk.method = method
if token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
if body and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
elseif method == "POST" then
  wrk.body = ""
end

local addrs = nil
local next_addr = 0

-- Runs in wrk's main state, once per thread before the run.
function setup(thread)
  if addrs == nil then
    addrs = {}
    for hp in string.gmatch(os.getenv("BENCH_ADDRS") or "", "[^,]+") do
      local host, port = hp:match("^(.*):(%d+)$")
      table.insert(addrs, wrk.lookup(host, port)[1])
    end
  end
  if #addrs > 0 then
    thread.addr = addrs[next_addr % #addrs + 1]
    next_addr = next_addr + 1
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"max_us":%.1f,"mean_us":%.1f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
