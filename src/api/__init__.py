"""Adapters: HTTP API, finance UI and the `billing` CLI. No business rule lives here."""
