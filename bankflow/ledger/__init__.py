"""The ledger's storage in PostgreSQL: accounts, postings, invariants.

Thin SQL over the pure rules in ``bankflow.domain``; shared by the poster, the
CLI and the API, so that each of them writes the ledger the same way.
"""
