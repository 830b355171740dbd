"""The daemon's HTTP surface: the unified API, webhook intake, /metrics, /healthz, /readyz."""
