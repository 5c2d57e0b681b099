"""The gift-card domain: pure, no I/O, time passed in."""
