"""Callback service: "call me back" requests with honest promised callback times."""
