"""Serving: the OpenAI-compatible HTTP server (``edgellm-fn serve``, ``app.py``) and the
terminal chat (``edgellm-fn chat``, ``chat.py``)."""
