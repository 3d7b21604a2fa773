"""From stored webhook to queued SIU: normalize, route, render, and commit it all at once.

Runs after the webhook was answered. Takes pending events in batches in arrival order; each
batch reads the appointment states it needs, applies the pure core event by event (later
events in a batch see the states earlier ones produced), and commits the event marks, the new
states, the rendered messages and the audit entries in one transaction. A crash before that
commit leaves the events pending; nothing is half done.

With a helper process (the default) the pure core runs there, and on SQLite the helper also
reads its batches on its own connection: the engine's event loop only commits. The helper
keeps its place and the results whose commit has not landed yet, so the engine asks for the
next batch while the last one commits; a commit that does not land as computed starts the
pipeline over (a new generation), and whatever was computed on top of it is thrown away.
"""

from engine.processing.core import Batch, BatchResult, process_batch
from engine.processing.helper import (
    ConfigMismatch,
    HelperBatch,
    HelperRead,
    helper_process_init,
    warm_helper,
)
from engine.processing.inputs import gather_inputs
from engine.processing.loop import Processor

__all__ = [
    "Batch",
    "BatchResult",
    "ConfigMismatch",
    "HelperBatch",
    "HelperRead",
    "Processor",
    "gather_inputs",
    "helper_process_init",
    "process_batch",
    "warm_helper",
]
