"""The stored batch schema as one namespace: field names and the helpers beside them.

The schema lives in modules named for each concern: ``names`` (field names and
statuses), ``ids`` (id validation, ``Layout``, field paths), ``new_batch``
(building a batch document), ``decode`` (reading one back) and ``batch_info``
(the runtime cache entry). Import from those. This namespace remains for the
one module still read as ``schema.X`` (``_write/writer.py``, edited by a
concurrent change): move its imports and delete this file.
"""

from .batch_info import BatchInfo as BatchInfo
from .decode import as_int as as_int
from .decode import counted as counted
from .decode import guarded as guarded
from .ids import Layout as Layout
from .ids import needs_whole_map_write as needs_whole_map_write
from .ids import player_field as player_field
from .names import *  # noqa: F403
