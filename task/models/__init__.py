"""task.models: see the modules."""
