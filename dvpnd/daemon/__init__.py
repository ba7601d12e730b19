"""The daemon: the reconcile pass, the status snapshot, the loops and reloads."""
