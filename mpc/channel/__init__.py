"""Authenticated, encrypted channels between the encrypted-diagnosis parties."""
