"""What is sent and how: composing, MIME, templates, the one send pipeline, providers, sequences, SMTP submission."""
