-- wrk script: a trivial synchronous call, add(40, 2), over keep-alive.
-- Counts non-200 answers so that the benchmark reports errors, not only speed.
wrk.method = "POST"
wrk.body = '{"args":[40,2]}'
wrk.headers["Content-Type"] = "application/json"

local failed = 0
function response(status, headers, body)
  if status ~= 200 then failed = failed + 1 end
end

function done(summary, latency, requests)
  io.write(string.format("non-200 answers: %d\n", failed))
end
