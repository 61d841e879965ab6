"""Repairs that return a clean model: pruning, fine-pruning, unlearning."""
