"""Display objects (matplotlib is imported lazily, when a plot is drawn)."""
