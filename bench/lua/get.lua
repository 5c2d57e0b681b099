-- Resico get card: read a random one of the seeded cards.
require("common")

function request()
  return send("GET", "/api/giftcards/v1/cards/" .. random_card(), auth_headers, nil)
end
