"""Small helpers with effects: durable files, processes, systemd, logging."""
