"""A key-value store in two versions, updatable in place by twinproxy (see README.md)."""
