"""Serving a trained model: load.py reads an export with jax alone, server.py answers HTTP requests."""
