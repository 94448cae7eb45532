"""Service: the HTTP API, the engine that carries traffic through store and monitor, the daemon's
lifecycle, sd_notify and logs. Holds no business logic of its own."""
