"""The one error a SASL mechanism raises when a login fails.

`reason` is for the broker's log and may name the user or the cause; `client_message` is what the client may see.
Kafka keeps those apart: most failures answer one generic message (so a client cannot tell an unknown user from a
wrong password), a few answer a specific one (a PLAIN login without a password, an authorization id that is not the
user). None means "use the generic message".
"""

from __future__ import annotations


class AuthenticationFailed(Exception):
    """A SASL exchange failed; the connection answers SASL_AUTHENTICATION_FAILED and is closed."""

    def __init__(self, reason: str, client_message: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.client_message = client_message
