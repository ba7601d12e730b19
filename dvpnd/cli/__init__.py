"""dvpnctl."""
