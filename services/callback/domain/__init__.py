"""Pure domain of the callback service: calendars, promises, lifecycle, phone numbers (no I/O)."""
