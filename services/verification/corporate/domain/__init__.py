"""Pure corporate-SIM logic: company identifiers, device identifiers, the SIM state machine."""
