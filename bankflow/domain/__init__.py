"""The domain: money, posting rules, validation and fraud rules as plain functions.

Nothing in here imports a Kafka, database, Redis or HTTP client (an import-linter
contract in pyproject.toml makes that a build check).
"""
