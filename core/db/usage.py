"""A vendor's counts per operation, for ``GET /api/usage`` (a repository joined into ``Database``).

Single jobs are counted from ``data_records`` by job kind and status; batches from ``batches``
by operation, summing their counters (the same counters the batch status route shows), so a
batch image is counted once even when its outcome is also mirrored into a record row. Both are
GROUP BY queries over indexed vendor columns: one pass per table, whatever the volume.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from core import contracts
from core.db.engine import Engine

# Single-job kinds (data_records.job_kind) as the operations batches name.
SINGLE_KIND_OPERATIONS = {
    contracts.KIND_FACE_CROP: contracts.OPERATION_CROP_FACE,
    contracts.KIND_REMOVE_BG: contracts.OPERATION_REMOVE_BG,
    contracts.KIND_ID_PHOTO: contracts.OPERATION_ID_PHOTO,
}


@dataclass
class SingleCounts:
    """Single jobs of one operation, by record status."""

    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(contracts.RECORD_STATUSES, 0))

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


@dataclass
class BatchCounts:
    """Batches of one operation and their images."""

    batches: int = 0
    images: int = 0
    processed: int = 0
    failed: int = 0
    skipped: int = 0
    canceled: int = 0

    @property
    def pending(self) -> int:
        """Images neither finished, skipped nor canceled (not yet extracted ones are not counted)."""
        return max(self.images - self.processed - self.failed - self.skipped - self.canceled, 0)


@dataclass
class OperationUsage:
    single: SingleCounts = field(default_factory=SingleCounts)
    batch: BatchCounts = field(default_factory=BatchCounts)


class Usage(Engine):
    """Counts per operation of one vendor (see the module docstring)."""

    def usage(self, vendor_id: str, project_id: str | None = None) -> dict[str, OperationUsage]:
        """Operation -> its single-job and batch counts for ``vendor_id`` (optionally one project)."""
        found = {operation: OperationUsage() for operation in contracts.BATCH_OPERATIONS}
        where, params = "vendor_id = ?", [vendor_id]
        if project_id is not None:
            where, params = where + " AND project_id = ?", [*params, project_id]
        kinds = list(SINGLE_KIND_OPERATIONS)
        rows = self._fetch_all(
            "SELECT job_kind, processing_status, COUNT(*) AS n FROM data_records WHERE " + where
            + f" AND job_kind IN ({', '.join('?' * len(kinds))}) GROUP BY job_kind, processing_status",
            (*params, *kinds))
        for row in rows:
            counts = found[SINGLE_KIND_OPERATIONS[row["job_kind"]]].single.by_status
            counts[row["processing_status"]] = counts.get(row["processing_status"], 0) + int(row["n"])
        rows = self._fetch_all(
            "SELECT operation, COUNT(*) AS batches, SUM(image_count) AS images, SUM(processed) AS processed,"
            " SUM(failed) AS failed, SUM(skipped) AS skipped, SUM(canceled) AS canceled FROM batches WHERE "
            + where + " GROUP BY operation", tuple(params))
        for row in rows:
            operation = row["operation"] if row["operation"] in found else contracts.OPERATION_CROP_FACE
            batch = found[operation].batch
            batch.batches += int(row["batches"])
            for name in ("images", "processed", "failed", "skipped", "canceled"):
                setattr(batch, name, getattr(batch, name) + int(row[name] or 0))
        return found
