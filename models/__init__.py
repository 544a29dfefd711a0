"""Networks (no I/O, no flag parsing) and the Lightning modules that train them."""
