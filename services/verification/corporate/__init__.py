"""Corporate SIMs (issue 13): companies register who or what uses each SIM on their contract."""
