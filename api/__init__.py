"""The FastAPI intake API: auth, accounts, transfers, statements, review, audit, ops pages."""
