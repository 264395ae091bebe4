"""Read models: projections of the billing event log, written with their tracking position."""
