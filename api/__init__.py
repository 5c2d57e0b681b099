"""The edge of giftledger: the Litestar app, the Resico and GiftStream adapters, /v1, the CLI."""
