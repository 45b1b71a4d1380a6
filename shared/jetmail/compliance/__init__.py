"""Who may do what and what was done: API keys, the audit trail, GDPR export and erasure."""
