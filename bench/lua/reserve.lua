-- Reserve then cancelreserve. A reserve that answers with a hold queues the cancel of that
-- card, and the next request sends it; otherwise the next request reserves a random card.
-- Every request counts as one operation; reserves and cancels are also counted apart.
require("common")

SCENARIO_COUNTERS = { "reserves", "cancels" }
local BODY = '{"locationCode":"SHOP1","amount":"0.01"}'
local pending = {}

function scenario_init()
  reserves, cancels = 0, 0
end

function on_success(body)
  local number = string.match(body, '"giftCardNo":"([^"]+)"')
  local reserved = tonumber(string.match(body, '"reservedBalance":([%d%.]+)') or "0")
  if number and reserved > 0 then table.insert(pending, number) end
end

function request()
  local number = table.remove(pending)
  if number then
    cancels = cancels + 1
    return send("GET", "/api/giftcards/v1/cancelreserve/" .. number, auth_headers, nil)
  end
  reserves = reserves + 1
  local path = "/api/giftcards/v1/reserve/" .. random_card()
  return send("POST", path, json_headers, BODY)
end
