"""Batch files (CSV, JSON Lines, ISO 20022 pain.001) into transfer requests."""
