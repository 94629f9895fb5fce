"""Serving: the batching engine (``engine``), the request schemas (``schemas``) and the HTTP app (``app``)."""
