-- One request shape for wrk, set from the environment by bench/http_bench.py:
--   BENCH_METHOD  GET (default) or POST
--   BENCH_TOKEN   bearer token; no Authorization header when unset or empty
--   BENCH_BODY    request body, sent as application/json; POST with no body
--                 sends "Content-Length: 0"
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
