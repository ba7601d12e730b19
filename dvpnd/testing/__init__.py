"""In-tree fakes (pyroute2's ipmock, ubuntu-pro-client's testing/fakes are the models), so the
reconcile loop is unit-tested without root. Never imported by the daemon itself."""
