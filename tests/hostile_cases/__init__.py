"""Hostile programs for the sandbox tests (see cases.py)."""
