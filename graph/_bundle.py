"""Import and export of the community bundle (being written)."""

from __future__ import annotations

__all__ = ["ImportReport", "export_bundle", "import_bundle"]


class ImportReport:  # replaced by the real implementation
    pass


def import_bundle(store, bundle_dir, show_progress=True):  # noqa: ANN001, ANN201
    raise NotImplementedError("import_bundle is being written")


def export_bundle(store, out_dir, fmt="csv"):  # noqa: ANN001, ANN201
    raise NotImplementedError("export_bundle is being written")
