"""Consume-transform-produce stages in Kafka transactions: validation, fraud rules, retry."""
