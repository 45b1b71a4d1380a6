"""jetmail: a self-hostable email platform."""
