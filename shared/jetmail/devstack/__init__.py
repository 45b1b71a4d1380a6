"""The embedded local stack: real nats-server, moto in server mode, an SMTP sink, and jetmail's own processes."""
