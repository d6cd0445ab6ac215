"""Sandbox ESIA identity provider: ESIA-shaped endpoints for `./dev up` and the tests."""
