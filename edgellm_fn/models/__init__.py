"""Model definitions (the xla provider's network) and checkpoint loading."""
