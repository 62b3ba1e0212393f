-- wrk script of scripts/bench_push.py: one push stream per wrk thread (run with -tN -cN, so
-- each thread has one connection and its requests go one after another, in order: a block's
-- updates must reach the server in the order they were made). A stream's request bodies were
-- made beforehand, one JSON body a line, in DIR/stream_<id>.jsonl; nothing is built while timed.
-- Arguments after "--": DIR ACCESS_TOKEN UPDATES_PER_BODY.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  bodies = {}
  local f = assert(io.open(args[1] .. "/stream_" .. id .. ".jsonl", "r"))
  for line in f:lines() do
    bodies[#bodies + 1] = line
  end
  f:close()
  headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. args[2]}
  per_body = tonumber(args[3])
  nxt = 1
  acked, refused, pushes, exhausted, sent_push = 0, 0, 0, 0, false
end

function request()
  local body = bodies[nxt]
  if body == nil then -- out of bodies: idle on a cheap GET, not counted, until the end
    exhausted = 1
    sent_push = false
    return wrk.format("GET", "/api/health")
  end
  nxt = nxt + 1
  sent_push = true
  return wrk.format("POST", "/api/sync/push", headers, body)
end

function response(status, headers, body)
  if not sent_push then
    return
  end
  pushes = pushes + 1
  if status ~= 200 then
    refused = refused + per_body
    return
  end
  local _, ok = string.gsub(body, '"status":"ok"', "")
  local _, created = string.gsub(body, '"status":"created"', "")
  acked = acked + ok + created
  refused = refused + per_body - ok - created
end

function done(summary, latency, requests)
  local a, r, p, e = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("acked")
    r = r + t:get("refused")
    p = p + t:get("pushes")
    e = e + t:get("exhausted")
  end
  io.write(string.format(
    'PUSH_JSON {"acked":%d,"refused":%d,"pushes":%d,"exhausted_streams":%d,' ..
    '"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"socket_errors":%d}\n',
    a, r, p, e, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
