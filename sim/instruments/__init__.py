"""Simulated instruments: servers speaking each instrument's wire protocol."""
