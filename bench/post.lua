-- wrk script: POSTs 1 KiB gold replies, each with a reply_id never sent before,
-- since a repeated reply_id is answered 200 as a duplicate instead of stored.
-- Arguments after `--`: TOKEN RUN_ID CONVERSATIONS.
-- Prints one line for the harness: "BENCH_RESULT key=value ...", latencies in µs.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_no", #threads)
end

function init(args)
  if #args < 3 then
    error("usage: wrk ... -s post.lua URL -- TOKEN RUN_ID CONVERSATIONS")
  end
  run_id = args[2]
  conversations = tonumber(args[3])
  headers = {
    ["Authorization"] = "Bearer " .. args[1],
    ["Content-Type"] = "application/json",
  }
  sent = 0
end

local BODY_BYTES = 1024
local FILLER = string.rep("Thanks for waiting. Your refund was approved and is on its way. ", 20)

function request()
  sent = sent + 1
  local head = string.format(
    '{"reply_id":"%s-%d-%d","account_id":1,"conversation_id":%d,'
      .. '"action":"approve_send","approved_by":"bench@example.com","content":"',
    run_id, thread_no, sent, sent % conversations + 1)
  local tail = '"}'
  local body = head .. string.sub(FILLER, 1, BODY_BYTES - #head - #tail) .. tail
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d status_errors=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
