"""The finance console: server-rendered pages over the read models, for finance and operators."""

from api.console.plugin import ConsolePlugin

__all__ = ["ConsolePlugin"]
