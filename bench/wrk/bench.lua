-- The one wrk script of the benchmark (bench/run.py sets the environment):
--   BENCH_METHOD       GET (default) or POST
--   BENCH_HEADER       optional "name: value" sent on every request (e.g. an Authorization)
--   BENCH_TOKENS_FILE  optional file of credentials, one a line, cycled in order and sent as
--                      "Authorization: Bearer <line>" (every request a different one until
--                      the file wraps around)
--   BENCH_TOKENS_OFFSET  where in that file to start (the runner continues where the previous
--                      run of the same configuration stopped, so a repetition does not start
--                      with tokens the filter verified and cached moments ago)
--   BENCH_SIGNED_FILE  optional file of signed requests, one a line "<Signature-Input>\t<Signature>",
--                      cycled like BENCH_TOKENS_FILE (from BENCH_TOKENS_OFFSET) and sent with
--                      BENCH_HEADER (the key); each line's nonce is meant to be sent once
--   BENCH_BODY         optional request body (POST), with content-type application/json
--   BENCH_MAX_REQUESTS optional: stop after this many responses (plus the few still in flight;
--                      the cache curve's passes), whatever the -d duration
-- done() prints one line "BENCH_JSON {...}" with requests, errors and latency percentiles (us).

local method = os.getenv("BENCH_METHOD") or "GET"
local header = os.getenv("BENCH_HEADER")
local tokens_file = os.getenv("BENCH_TOKENS_FILE")
local body = os.getenv("BENCH_BODY")

wrk.method = method
if header and header ~= "" then
  local name, value = header:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end
if body and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

local signed_file = os.getenv("BENCH_SIGNED_FILE")
local tokens = nil
local signed = false
if signed_file and signed_file ~= "" then
  tokens_file = signed_file
  signed = true
end
if tokens_file and tokens_file ~= "" then
  tokens = {}
  for line in io.lines(tokens_file) do
    if line ~= "" then tokens[#tokens + 1] = line end
  end
end

if tokens then
  local requests = {}
  local index = tonumber(os.getenv("BENCH_TOKENS_OFFSET") or "0") or 0
  init = function(args)
    -- Pre-format every request once, so the hot loop only picks the next one.
    for i, token in ipairs(tokens) do
      if signed then
        local input, signature = token:match("^([^\t]+)\t(.+)$")
        local headers = {["Signature-Input"] = input, ["Signature"] = signature}
        for name, value in pairs(wrk.headers) do headers[name] = value end
        requests[i] = wrk.format(nil, nil, headers)
      else
        requests[i] = wrk.format(nil, nil, {["Authorization"] = "Bearer " .. token})
      end
    end
    index = index % #requests
  end
  request = function()
    index = index % #requests + 1
    return requests[index]
  end
end

local max_requests = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "") or 0
if max_requests > 0 then
  local seen = 0
  response = function(status, headers, body)
    seen = seen + 1
    if seen >= max_requests then
      wrk.thread:stop()
    end
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
