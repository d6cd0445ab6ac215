"""Submitting corporate SIM registrations to the registry: the adapter, its HTTP client, the worker."""
