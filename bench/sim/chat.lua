-- wrk script: POST a small chat completion to llmq-sim.
-- Each wrk thread loads this script into its own Lua state and draws a
-- random nonce, so every request text is unique across threads and runs:
-- every answer is a fresh hash and double billing stays 0.
local f = io.open("/dev/urandom", "rb")
local raw = f:read(8)
f:close()
local nonce = raw:gsub(".", function(c) return string.format("%02x", c:byte()) end)

local counter = 0
request = function()
  counter = counter + 1
  local body = '{"model":"sim-small","max_tokens":16,"messages":[{"role":"user","content":"bench '
    .. nonce .. ' ' .. counter .. '"}]}'
  return wrk.format("POST", "/v1/chat/completions",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer bench-key"}, body)
end
