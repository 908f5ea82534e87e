"""The local stack (Kafka from Maven jars, PostgreSQL, Redis), migrations and ops config."""
