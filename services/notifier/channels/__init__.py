"""Delivery channels: one adapter per provider behind the `Channel` interface in base.py."""
