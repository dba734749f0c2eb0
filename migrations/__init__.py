"""The toolkit's bundled migrations (shipped as ``toolkit.migrations``).

One file per migration, ``NNN_name.py``: a module docstring (its first line describes it),
``DATABASE = "<positions|trading|ml_training>"``, and ``upgrade(db)`` / ``downgrade(db)``.
The runner discovers the files by path; they are never imported by name.
"""
