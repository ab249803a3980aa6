"""State sync methods: how a new version gets the running version's state."""
