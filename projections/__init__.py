"""Read models built from the Card events, plus the configuration tables they are read beside."""
