"""Data: one DataModule over offline sources (embedded, system package, local folder) and opt-in downloads."""
