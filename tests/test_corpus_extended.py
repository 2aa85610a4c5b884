"""The extended corpus set (opt-in): more pieces (4-6 voices), the standard
plan untouched, splits disjoint by piece across both kinds of dataset, and
the reserved folders never used."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from training import synth
from training.synth import corpus

pytest.importorskip("music21")


@pytest.fixture(scope="module")
def pieces():
    return corpus.candidate_pieces(), corpus.candidate_pieces(extended=True)


def test_the_extended_set_adds_pieces_and_never_a_reserved_folder(pieces):
    standard, extended = pieces
    assert set(standard) < set(extended)
    assert len(extended) >= len(standard) + 500  # Palestrina's 5- and 6-voice movements alone are 693
    folders = collections.Counter(p.split("/")[0] for p in extended)
    assert not set(folders) & set(corpus.RESERVED_COMPOSERS)
    assert set(folders) <= set(corpus.COMPOSERS + corpus.EXTRA_COMPOSERS)


def test_standard_pieces_keep_their_split_and_splits_stay_disjoint(pieces):
    standard, extended = pieces
    base = corpus.split_pieces(list(standard), 0)
    pools = corpus.split_pieces_extended(0)
    assert sorted(sum(pools.values(), [])) == sorted(extended)  # every piece once
    for split in corpus.SPLITS:
        assert set(base[split]) <= set(pools[split])
        for other in corpus.SPLITS:
            if other != split:
                assert not set(pools[split]) & set(pools[other])
                assert not set(pools[split]) & set(base[other])


def test_the_standard_plan_is_what_it_was_and_the_extended_one_mixes_in_new_pieces(pieces):
    standard, extended = pieces
    plans = synth.plan_tracks(400, seed=0)
    assert plans == synth.plan_tracks(400, 0, standard)  # candidate_pieces() is the default, as before
    assert all(p.parts == (4,) for p in plans)
    wide = synth.plan_tracks(400, seed=0, extended=True)
    assert all(p.parts == corpus.EXTENDED_PARTS for p in wide)
    new = [p for p in wide if p.piece not in set(standard)]
    assert len(new) >= 100  # the added pieces are drawn from the start, not after the old ones run out
    for split in corpus.SPLITS:
        assert {p.piece for p in wide if p.split == split}.isdisjoint(
            {p.piece for p in plans if p.split != split})
    with pytest.raises(ValueError, match="not both"):
        synth.plan_tracks(3, 0, standard, extended=True)


def _piece(voices: int) -> synth.Piece:
    notes = [[[80 - 6 * v, float(t), 1.0] for t in range(32)] for v in range(voices)]
    bars = [synth.Bar(4.0 * i, 4.0, 4.0, 1.0, 4, 2, "4/4") for i in range(8)]
    return synth.Piece(f"toy{voices}", notes, [f"V{v}" for v in range(voices)], bars, [], 32.0)


@pytest.mark.parametrize("voices", [5, 6])
def test_every_voice_of_a_five_or_six_part_piece_is_played(voices):
    for seed in range(10):
        notes, info = synth.arrange(_piece(voices), np.random.default_rng(seed), 20.0)
        assert info["voices"]["bass"] == [f"V{voices - 1}"]
        upper = info["voices"]["guitar"] + info["voices"]["piano"]
        assert sorted(upper) == [f"V{v}" for v in range(voices - 1)]
        assert info["voices"]["guitar"] and info["voices"]["piano"]


def test_a_plan_refuses_a_piece_with_a_voice_count_it_does_not_take(monkeypatch, tmp_path):
    corpus._PIECES["toy5"] = _piece(5)
    try:
        with pytest.raises(synth.UnusablePiece, match="5 of its parts have notes, not 4"):
            corpus.load_piece("toy5")
        assert len(corpus.load_piece("toy5", parts=corpus.EXTENDED_PARTS).voices) == 5
        plan = synth.TrackPlan(0, "Track00001", "train", "toy5", ("toy4",))
        corpus._PIECES["toy4"] = _piece(4)
        assert corpus.first_usable_piece(plan).id == "toy4"  # the standard plan falls back
        wide = synth.TrackPlan(0, "Track00001", "train", "toy5", ("toy4",), corpus.EXTENDED_PARTS)
        assert corpus.first_usable_piece(wide).id == "toy5"
    finally:
        corpus._PIECES.pop("toy5", None)
        corpus._PIECES.pop("toy4", None)
