"""Abonent: callback, verification and notifier services on NATS JetStream and PostgreSQL."""
