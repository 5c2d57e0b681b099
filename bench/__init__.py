"""`make bench`: load the real service with wrk and check the ledger afterwards (not a test)."""
