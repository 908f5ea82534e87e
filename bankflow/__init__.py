"""bankflow: a bank's transfer pipeline (Kafka in, a double-entry ledger in PostgreSQL out)."""

__version__ = "0.1.0"
