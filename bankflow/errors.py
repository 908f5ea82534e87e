"""The root of every error bankflow raises on purpose.

Each package has its own ``errors.py`` whose exceptions derive from ``BankflowError``.
Whether an error is transient (worth a retry) or permanent (dead-letter it) is a
property of its class, so the stage that catches it never has to guess.
"""

from __future__ import annotations


class BankflowError(Exception):
    """Root of bankflow's own errors."""

    #: A transient error may succeed when tried again later (retry topic);
    #: a permanent one never will (dead-letter topic).
    transient: bool = False


class ConfigurationError(BankflowError):
    """A setting is missing, malformed or unsafe for the environment."""


class StackError(BankflowError):
    """The local stack could not be started, stopped or reached.

    The message always says what went wrong and what to do about it.
    """
