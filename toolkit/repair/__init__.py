"""Repairs: planned, verified, logged and undoable (see the integrity repair command)."""
