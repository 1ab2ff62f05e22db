"""task.federation: see the modules."""
