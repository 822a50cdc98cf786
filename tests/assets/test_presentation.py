"""Metadata tables carry their schema: one typed column per header, numbers kept as numbers."""

from dagster import TableMetadataValue

from babylon_assets.assets.presentation import counts_table, metadata_table


def test_columns_are_typed_by_their_values():
    table = metadata_table(
        ["agent", "P&L", "trades", "ok", "note"], [("a", 1.5, 3, True, None), ("b", -2, 0, False, "x")]
    )
    assert isinstance(table, TableMetadataValue)
    assert [(c.name, c.type) for c in table.schema.columns] == [
        ("agent", "string"),
        ("P&L", "float"),
        ("trades", "int"),
        ("ok", "bool"),
        ("note", "string"),
    ]
    assert table.records[1].data == {"agent": "b", "P&L": -2, "trades": 0, "ok": False, "note": "x"}


def test_counts_come_largest_first():
    table = counts_table({"oversized": 1, "invalid_json": 4})
    assert [(r.data["reason"], r.data["count"]) for r in table.records] == [("invalid_json", 4), ("oversized", 1)]
