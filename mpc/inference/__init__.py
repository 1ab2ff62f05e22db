"""Encrypted diagnosis: a model owner and a data owner evaluate a model under CrypTen."""
