"""The confidential overlay: two WireGuard layers, planned (plan.py) and routed (paths.py)."""
