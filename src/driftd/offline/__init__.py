"""Offline: replay of a history file on a simulated clock, its report, and the demo."""
