-- GiftStream create: a new QR card in EUR; the server generates the identifier.
require("common")

local BODY = '{"cardType":"2","currencyCode":"978","initialBalance":"1.00"}'

function request()
  return send("POST", "/giftcard", json_headers, BODY)
end
