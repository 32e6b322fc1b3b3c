"""Loading a transformers model without the output that only says all went well.

transformers 5 draws a "Loading weights" progress bar for every ``from_pretrained`` and logs a
LOAD REPORT warning for every key the checkpoint and the network do not share. Our encoders drop
BERT's pooler (``add_pooling_layer=False``), so each load of MiniLM reports the pooler's weights
as UNEXPECTED: a table on stderr in every stage that says nothing is wrong. :func:`quiet_transformers`
hides the bar and such a report; a report with any other row (MISSING, MISMATCH, an unexpected key
outside the pooler) is still logged in full.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

EXPECTED_UNUSED = ("pooler.",)  # checkpoint keys our encoders leave out on purpose
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REPORT_LOGGER = "transformers.modeling_utils"  # the logger transformers hands its load report


def only_expected_unused(message: str, prefixes: tuple[str, ...] = EXPECTED_UNUSED) -> bool:
    """Whether ``message`` is a transformers LOAD REPORT whose rows are all UNEXPECTED keys under ``prefixes``."""
    text = _ANSI.sub("", message)
    if "LOAD REPORT" not in text:
        return False
    rows = [[cell.strip() for cell in line.split("|")] for line in text.splitlines() if "|" in line]
    rows = [row for row in rows if len(row) >= 2 and row[0] != "Key" and not set(row[0]) <= {"-", "+"}]
    return bool(rows) and all(status == "UNEXPECTED" and key.startswith(prefixes) for key, status, *_ in rows)


@contextlib.contextmanager
def quiet_transformers(expected_unused: tuple[str, ...] = EXPECTED_UNUSED) -> Iterator[None]:
    """Within the block: no transformers progress bars, and no load report that lists only
    ``expected_unused`` checkpoint keys; every other warning passes."""
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    report_logger = logging.getLogger(_REPORT_LOGGER)

    def drop(record: logging.LogRecord) -> bool:
        return not only_expected_unused(record.getMessage(), expected_unused)

    hf_logging.disable_progress_bar()
    report_logger.addFilter(drop)
    try:
        yield
    finally:
        report_logger.removeFilter(drop)
        if bars_were_on:
            hf_logging.enable_progress_bar()


__all__ = ["EXPECTED_UNUSED", "only_expected_unused", "quiet_transformers"]
