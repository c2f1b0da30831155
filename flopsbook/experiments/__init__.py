"""Small experiments the book runs for real: ``context`` (choosing the training context)."""
