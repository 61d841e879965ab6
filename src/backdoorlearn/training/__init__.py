"""Train a clean model on a possibly poisoned training set."""
