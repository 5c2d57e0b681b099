-- The HTTP floor: the cheapest endpoint of the same app (path given as the extra argument).
require("common")

function request()
  return send("GET", extra, nil, nil)
end
