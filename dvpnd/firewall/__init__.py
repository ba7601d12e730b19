"""The `inet dvpn` nftables table: the ruleset (pure) and the only code that talks to libnftables."""
