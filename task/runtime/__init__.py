"""task.runtime: see the modules."""
