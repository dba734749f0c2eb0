"""The integrity rules the toolkit ships (shipped as ``toolkit.checks``), grouped by subject.

The engine discovers this package and reads ``MODULES`` for the catalogue's order; each module lists
its rules in ``RULES``. Write your own rules the same way (see the README): in a checks directory
(``checks-dir`` under ``[tool.toolkit]``) or in a package registered under the entry-point group
``toolkit.checks``.
"""

MODULES = ("ledger", "bankroll", "positions", "closed_positions", "orders", "snapshots", "ml", "physical")
