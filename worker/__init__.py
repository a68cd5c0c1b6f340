"""The worker: one process per hardware class that takes jobs off its queue and runs them."""
