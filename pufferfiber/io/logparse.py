"""Former name of :mod:`pufferfiber.io.upstream_log` (the importer for upstream ``log.out`` files),
kept so that existing notebooks and scripts importing ``pufferfiber.io.logparse`` still run."""

from pufferfiber.io.upstream_log import (
    LOSS_FIELDS,
    SUMMARY_FIELDS,
    EpochRecord,
    LogParseError,
    columns,
    import_log,
    parse_block,
    parse_dashboard,
    parse_duration,
    parse_log,
    parse_number,
    read_metrics,
    series,
    split_blocks,
    strip_ansi,
)

__all__ = [
    "LOSS_FIELDS",
    "SUMMARY_FIELDS",
    "EpochRecord",
    "LogParseError",
    "columns",
    "import_log",
    "parse_block",
    "parse_dashboard",
    "parse_duration",
    "parse_log",
    "parse_number",
    "read_metrics",
    "series",
    "split_blocks",
    "strip_ansi",
]
