"""Event-sourced metered billing: aggregates, events, pricing and the application's commands."""
