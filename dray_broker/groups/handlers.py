"""Consumer group APIs (classic and KIP-848)."""

HANDLERS: dict = {}
