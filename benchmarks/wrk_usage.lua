-- wrk script: POST a usage record with a unique event_id per request.
-- Arguments (after `--`): <event-id prefix> <max requests per thread, 0 = unbounded> <customers>
--   [occurred_at] [dup_every: every Nth request repeats the previous event id, 0 = never]
-- The body must match benchmarks/loadgen.py:usage_body().

local thread_count = 0
local counter = 0
local prefix, limit, customers = "bench", 0, 100
local occurred_at, dup_every = "2025-01-15T12:00:00+00:00", 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end

function init(args)
  prefix = args[1] or prefix
  limit = tonumber(args[2]) or limit
  customers = tonumber(args[3]) or customers
  occurred_at = args[4] or occurred_at
  dup_every = tonumber(args[5]) or dup_every
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  if limit > 0 and counter > limit then
    wrk.thread:stop()
  end
  local n = counter
  if dup_every > 0 and n > 1 and n % dup_every == 0 then
    n = n - 1
  end
  local body = string.format(
    '{"event_id":"%s-%d-%d","customer_id":"cust-%d","meter":"api_calls","quantity":"1.5",' ..
    '"occurred_at":"%s","properties":{"region":"eu-west-1","status":200}}',
    prefix, tid, n, n % customers, occurred_at)
  return wrk.format("POST", nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
