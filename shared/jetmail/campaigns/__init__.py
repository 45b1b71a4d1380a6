"""Campaigns: audiences, plans, batches, scheduling, pause/resume/cancel and A/B tests."""
