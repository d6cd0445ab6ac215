"""`abonent simulate-callbacks`: hands its arguments to the callback service's promise simulation."""

from __future__ import annotations

import argparse
import importlib


def cmd_simulate_callbacks(args: argparse.Namespace) -> int:
    # Imported only when asked for: the simulation is the callback service's, not every command's.
    simulation = importlib.import_module("services.callback.simulation")
    return int(simulation.main(args.rest))
