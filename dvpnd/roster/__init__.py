"""The signed roster: who the overlay's members are, signed by a key the hub never holds."""
