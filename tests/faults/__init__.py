"""Fault tests: every service, NATS and PostgreSQL as supervised processes, killed in turn under load."""
