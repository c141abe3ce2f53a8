"""Piece geometry and the on-disk piece map of a swarm download (swarm/pieces.py)."""

from __future__ import annotations

from pathlib import Path

from locpick.fetch.swarm.pieces import Geometry, PieceMap, auto_piece_size

MiB = 1 << 20
G = Geometry(16 * MiB, MiB)


def test_auto_piece_size() -> None:
    assert auto_piece_size(64 * MiB, 0) == MiB
    assert auto_piece_size(256 * MiB, 0) == 4 * MiB
    assert auto_piece_size(100 << 30, 0) == 32 * MiB
    assert auto_piece_size(64 * MiB, 123456) == 123456


def test_piece_map_round_trip_and_identity(tmp_path: Path) -> None:
    ident = {"image_id": "a", "size": G.size, "hash": "x"}
    m = PieceMap(G, tmp_path / "p", ident)
    m.done[0] = m.done[1] = m.done[5] = True
    m.save()
    again = PieceMap(G, tmp_path / "p", ident)
    assert again.load() == 3 and again.prefix_bytes() == 2 * MiB
    other = PieceMap(G, tmp_path / "p", {**ident, "hash": "y"})
    assert other.load() == 0
