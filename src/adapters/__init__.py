"""Infrastructure the domain does not know about: the event stores and their extra tables."""
