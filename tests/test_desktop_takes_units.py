"""desktop/takes.py (pure): switching, comping, keeping and deleting takes, exact samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from desktop.session import LaneAudio, Session
from desktop.takes import LaneTakes, Piece, Take, TakeError

FRAMES = 10


def take(value: float, label: str = "t", frames: int = FRAMES) -> Take:
    return Take(LaneAudio(np.full((2, frames), value, np.float32), 100, Path(f"{label}.wav")), label, seed=int(value))


def three() -> LaneTakes:
    return LaneTakes.first(take(1.0)).added(take(2.0)).added(take(3.0))


def test_added_takes_play_whole_and_switch():
    lane = three()
    assert lane.chosen == (3,) and lane.single_take() is lane.takes[2]
    assert lane.choose(1).render()[0].tolist() == [1.0] * FRAMES
    with pytest.raises(TakeError, match="takes 1 to 3"):
        lane.choose(4)
    other = take(9.0, frames=FRAMES + 1)  # a result of another length starts the lane's takes afresh
    assert lane.added(other).takes == (other,)


def test_comp_cuts_exactly_and_merges_neighbours():
    lane = three().choose(1).comp(2, 5, 2).comp(5, 7, 3)
    assert lane.pieces == (Piece(0, 2, 1), Piece(2, 5, 2), Piece(5, 7, 3), Piece(7, 10, 1))
    assert lane.render()[1].tolist() == [1, 1, 2, 2, 2, 3, 3, 1, 1, 1]
    assert lane.chosen == (1, 2, 3, 1)
    assert lane.comp(5, 7, 2).pieces == (Piece(0, 2, 1), Piece(2, 7, 2), Piece(7, 10, 1))  # merged
    assert lane.comp(0, 10, 3).pieces == (Piece(0, 10, 3),)
    with pytest.raises(TakeError, match="empty"):
        lane.comp(12, 20, 1)


def test_delete_and_keep_renumber_the_pieces():
    lane = three().choose(3).comp(0, 4, 1)
    with pytest.raises(TakeError, match="playing"):
        lane.delete(3)
    fewer = lane.delete(2)
    assert [t.seed for t in fewer.takes] == [1, 3] and fewer.pieces == (Piece(0, 4, 1), Piece(4, 10, 2))
    np.testing.assert_array_equal(fewer.render(), lane.render())
    kept = three().choose(2).keep_chosen()
    assert [t.seed for t in kept.takes] == [2] and kept.pieces == (Piece(0, 10, 1),)


def test_session_takes_join_one_undo_step_per_job():
    session = Session(("bass", "drums"))
    before = take(0.5).audio
    session.apply_result({"bass": before}, "separate")
    first, second = take(1.0), take(2.0)
    session.add_takes({"bass": first}, "Regenerate")
    session.add_takes({"bass": second}, "Regenerate", new_step=False)
    lane = session.takes["bass"]
    assert [t.audio for t in lane.takes] == [before, first.audio, second.audio]  # what was there is take 1
    assert session.audio["bass"] is second.audio
    session.change_takes("bass", lane.choose(2), first.audio, "choose")
    assert session.undo() == "choose" and session.audio["bass"] is second.audio
    assert session.undo() == "Regenerate" and session.audio["bass"] is before and session.takes["bass"] is None
