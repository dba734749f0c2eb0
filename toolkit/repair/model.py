"""What a rule's repair is (filled in by the repair runner)."""
from __future__ import annotations

from typing import Any

RepairPlanner = Any
