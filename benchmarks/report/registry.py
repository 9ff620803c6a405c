"""Every table the report can render, by the name its markers use (read-only: built once from the topic modules)."""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .table import Table
from .tables import accuracy, data, deploy, distributed, training, vit


def _join(*parts: Mapping[str, Table]) -> Mapping[str, Table]:
    joined: dict[str, Table] = {}
    for part in parts:
        clash = joined.keys() & part.keys()
        if clash:
            raise ValueError(f"tables registered twice: {sorted(clash)}")
        joined.update(part)
    return MappingProxyType(joined)


TABLES: Mapping[str, Table] = _join(training.TABLES, accuracy.TABLES, deploy.TABLES, distributed.TABLES,
                                     data.TABLES, vit.TABLES)
