"""Hardware detection and backend selection."""
