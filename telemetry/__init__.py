"""Observability: Prometheus metrics and the request-id-carrying log lines."""
