-- Resico use-card: pay 0.01 with a random one of the seeded cards.
require("common")

local BODY = '{"amount":"0.01"}'

function request()
  local path = "/api/giftcards/v1/transactions/" .. consumer_key .. "/cards/" .. random_card()
  return send("POST", path, json_headers, BODY)
end
