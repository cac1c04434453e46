"""Engines: the binding contract (spec), the provider protocol and the providers."""
