"""Model-level defenses: is this model backdoored, which label, what trigger?"""
