"""DynamoDB storage: one table, every access pattern documented in ``table.py``."""
