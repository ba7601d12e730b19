"""The daemon's front doors: the status page, metrics and the control socket."""
