"""Observability: the counters the tracker and peers keep (stats), their Prometheus view (metrics), the
tracker's dashboard data (dashboard) and the HTTP server that serves both (http, `--http HOST:PORT`)."""
