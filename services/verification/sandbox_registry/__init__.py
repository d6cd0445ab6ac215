"""The sandbox corporate-SIM registry: the stand-in `abonent up` and the tests submit registrations to."""
