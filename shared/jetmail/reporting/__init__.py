"""Figures: the counters every send and event adds to, campaign and account reports, the queue-lag metric."""
