"""Step functions, sampling, decode loops and tokenization."""
