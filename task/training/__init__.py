"""task.training: see the modules."""
