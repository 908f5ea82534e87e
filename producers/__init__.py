"""Code that only writes to Kafka: the intake publisher and the batch-file ingester."""
