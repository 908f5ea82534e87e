"""Who may sign in: users, their passwords, failed-login lockout and refresh tokens.

``policy`` holds the rules as plain functions; ``passwords`` the argon2id hashing;
``store`` the SQL over the ``users`` and ``refresh_tokens`` tables.
"""
