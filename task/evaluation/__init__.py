"""task.evaluation: see the modules."""
