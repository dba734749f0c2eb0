"""The integrity rules the toolkit ships (shipped as ``toolkit.checks``), one subject per module."""
