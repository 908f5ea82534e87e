"""Code that leaves Kafka: ledger poster, outbox relay, DLQ sink, cache updater, lag exporter."""
