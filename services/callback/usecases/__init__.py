"""Callback use cases: intake, the visitor's requests, sites and the agents' presence (one module each)."""
