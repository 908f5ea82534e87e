"""Message and API models, topic names and JSON Schema export. No I/O lives here."""
