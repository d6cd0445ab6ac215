"""Verification service: subscribers confirm passport data via an ESIA-style OAuth flow; corporate SIMs."""
