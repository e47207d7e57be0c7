-- wrk script: the requests of the file named by $BENCH_REQUESTS, in a loop.
-- A line is "METHOD<TAB>PATH<TAB>BODY<TAB>COOKIE"; BODY and COOKIE may be empty.
-- (Requests that must be sent once each, like accepts, go through bench.httpload.)
local lines = {}
local index = 0

function init(args)
  for line in io.lines(os.getenv("BENCH_REQUESTS")) do
    local method, path, body, cookie = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    table.insert(lines, {method = method, path = path, body = body, cookie = cookie})
  end
end

function request()
  index = index % #lines + 1
  local item = lines[index]
  local headers = {}
  if item.cookie ~= "" then headers["Cookie"] = item.cookie end
  local body = nil
  if item.body ~= "" then body = item.body end
  return wrk.format(item.method, item.path, headers, body)
end
