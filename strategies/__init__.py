"""Aggregation strategies and their protocols (server side of Flower)."""
