"""Keeping mail wanted: suppressions and stops, feedback (bounces, complaints), tracking, reputation, rate limits."""
