"""Who is mailed: contacts, their lists and segments, imports."""
