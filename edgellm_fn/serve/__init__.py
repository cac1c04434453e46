"""The OpenAI-compatible HTTP server (``edgellm-fn serve``)."""
