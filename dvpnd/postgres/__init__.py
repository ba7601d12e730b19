"""PostgreSQL on the spokes: dvpn's server files (pure), the server's runbook steps, backups, supervision."""
