"""The ``sweep-azure`` flow: delete the Azure resources that killed runs left, on a schedule."""

from __future__ import annotations

from prefect import flow, get_run_logger

from cluster.sweep import parse_tags, report, sweep_configured


@flow(name="sweep-azure", log_prints=True)
def sweep_azure(older_than: str | None = None, tags: list[str] | None = None,
                dry_run: bool = False) -> dict[str, int]:
    """Delete fleetscore's VMs, NICs, disks and public IPs older than ``older_than``.

    Args:
        older_than: an age such as ``6h``; default ``fleetscore.sweep.older-than``.
        tags: ``key=value`` tags a resource must carry; default ``fleetscore.cluster.azure.tags``.
        dry_run: only list what would be deleted.
    """
    logger = get_run_logger()
    found, failed = sweep_configured(parse_tags(tags or []), older_than, dry_run)
    for line in report(found, failed, dry_run):
        logger.info(line)
    if failed:
        raise RuntimeError(f"{len(failed)} leftover resources could not be deleted; the next sweep retries them")
    return {"found": len(found), "deleted": 0 if dry_run else len(found)}
