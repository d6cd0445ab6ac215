"""How many numbers one person may hold across all operators, corporate SIMs handed to them included."""

from __future__ import annotations

# Russian citizens from 1 Apr 2025; 10 for foreigners (who bind only in an office, so not through this API).
NUMBER_LIMIT = 20
LEGAL_SOURCE = "126-FZ «О связи» as amended by 303-FZ of 08.08.2024: at most 20 numbers per person"
