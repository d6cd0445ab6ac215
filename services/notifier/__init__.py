"""Notifier service: events become messenger messages and SMS, never at night, never twice."""
