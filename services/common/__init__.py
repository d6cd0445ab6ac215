"""Shared plumbing for every Abonent service: settings, DB, bus, outbox/inbox, logging, health."""
