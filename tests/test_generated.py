"""Generated arrangements (training/synth/generated.py and its harmony,
textures and grooves): determinism, ranges and lengths, polyphony, bass on
chord tones, strum stagger, the info contract of arrangement.arrange, and
tracks from either source."""

from __future__ import annotations

import numpy as np
import pytest

from training import synth
from training.synth import generated, grooves, harmony, textures
from training.synth.arrangement import DRUM_KITS, PITCH_RANGE, PROGRAMS
from training.synth.drums import CLOSED_HAT, KICK, SNARE, TICKS_PER_QUARTER

PITCHED = ("bass", "guitar", "piano")
SONGS = 20


def _song(index: int, max_seconds: float = 60.0):
    return generated.arrange_generated(np.random.default_rng([0, index]), max_seconds)


@pytest.fixture(scope="module")
def songs():
    return [_song(i) for i in range(SONGS)]


def _as_tuples(notes):
    return {stem: [(n.channel, n.pitch, n.on, n.off, n.velocity) for n in ns] for stem, ns in notes.items()}


def test_same_generator_state_gives_the_same_song_and_another_seed_another():
    a, b, c = _song(3), _song(3), _song(4)
    assert _as_tuples(a[0]) == _as_tuples(b[0]) and a[1] == b[1]
    assert _as_tuples(a[0]) != _as_tuples(c[0])


def test_notes_stay_in_their_ranges_and_inside_the_track(songs):
    for notes, info in songs:
        assert notes.keys() == {"bass", "drums", "guitar", "piano"}
        for stem in PITCHED:
            assert notes[stem], stem
            low, high = PITCH_RANGE[stem]
            for n in notes[stem]:
                assert low <= n.pitch <= high, (stem, n)
                assert 0 <= n.channel < 9  # channel 10 (index 9) would play drums
                assert 1 <= n.velocity <= 127
        for stem, ns in notes.items():
            for n in ns:
                assert 0.0 <= n.on < n.off <= info["music_seconds"] + 1e-6 <= 60.0 + 1e-6, (stem, n)
        assert generated.MIN_SECONDS - 2.5 <= info["music_seconds"] <= 60.0  # the last bar may end before 12.5 s


@pytest.mark.parametrize("max_seconds", [3.0, 8.0, 20.0])
def test_a_short_limit_cuts_every_note(max_seconds):
    for i in range(5):
        notes, info = _song(100 + i, max_seconds)
        assert info["music_seconds"] <= max_seconds + 1e-6
        assert all(n.off <= max_seconds for ns in notes.values() for n in ns)


def test_a_nonpositive_limit_is_refused():
    with pytest.raises(ValueError, match="max_seconds"):
        generated.arrange_generated(np.random.default_rng(0), 0.0)


def _sounding(notes, end: float, step: float = 0.01) -> np.ndarray:
    """How many pitched notes sound at each ``step`` of the track."""
    grid = np.arange(0.0, end, step)
    count = np.zeros(len(grid), int)
    for stem in PITCHED:
        for n in notes[stem]:
            count[(grid >= n.on) & (grid < n.off)] += 1
    return count


def test_three_or_more_voices_most_of_the_time_and_long_notes_occur(songs):
    shares = [float(np.mean(_sounding(notes, info["music_seconds"]) >= 3)) for notes, info in songs]
    assert np.mean(shares) >= 0.7, shares
    assert min(shares) >= 0.3, shares
    long_notes = [sum(n.off - n.on >= 2.0 for s in PITCHED for n in notes[s]) for notes, _ in songs]
    assert sum(k > 0 for k in long_notes) >= SONGS // 2, long_notes


def _chord_at(info, t: float):
    for start, end, _, pcs in info["chords"]:
        if start - 0.015 <= t < end - 0.015:
            return pcs
    return None


def test_bass_plays_chord_tones_on_the_beats(songs):
    hits = total = 0
    for notes, info in songs:
        meter = textures.METERS[info["time_signature"]]
        spq = 60.0 / info["quarter_bpm"]
        for n in notes["bass"]:
            position = (n.on / spq) % meter.beat
            if min(position, meter.beat - position) * spq > 0.015:  # not on a beat
                continue
            pcs = _chord_at(info, n.on)
            if pcs is not None:
                total += 1
                hits += n.pitch % 12 in pcs
    assert total > 500
    assert hits / total >= 0.85, (hits, total)


def test_strums_fan_out_five_to_thirty_ms_per_string():
    checked = 0
    for i in range(60):
        notes, info = _song(i)
        if info["voices"]["guitar"] != ["strum"]:
            continue
        ons = sorted(n.on for n in notes["guitar"])
        # Strokes are separated by far more than a stroke's own spread (at most
        # 40 % of the time to the next stroke), so onsets closer than 31 ms are
        # strings of one stroke.
        gaps = np.diff(ons)
        within = gaps[gaps < 0.031]
        assert within.size > 50
        assert within.min() >= 0.005 - 1e-6 and within.max() <= 0.030 + 1e-6, (within.min(), within.max())
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_info_has_every_key_arrange_gives_plus_the_style(songs):
    piece = synth.Piece("toy", [[[72 - 7 * v, float(t), 1.0] for t in range(32)] for v in range(4)],
                        ["S", "A", "T", "B"], [synth.Bar(4.0 * i, 4.0, 4.0, 1.0, 4, 2, "4/4") for i in range(8)],
                        [], 32.0)
    _, corpus_info = synth.arrange(piece, np.random.default_rng(0), 20.0)
    for notes, info in songs:
        assert set(corpus_info) <= set(info)
        assert {"style", "chords"} <= set(info)
        assert set(info["programs"]) == set(notes)
        for stem in PITCHED:
            assert info["programs"][stem] in PROGRAMS[stem]
        assert info["programs"]["drums"] in DRUM_KITS
        assert info["time_signature"] in textures.METERS
        assert info["style"]["form"][-1] == "E"
    drawn = {(info["time_signature"], info["style"]["mode"], info["style"]["drums"]) for _, info in songs}
    assert len(drawn) >= 8  # meters, modes and grooves vary


def test_every_track_index_gets_its_own_song():
    infos = [_song(i, 30.0)[1] for i in range(30)]
    charts = [tuple(c[2] for c in info["chords"]) + (info["quarter_bpm"],) for info in infos]
    assert len(set(charts)) == len(charts)


def test_generated_plans_take_the_split_of_their_index():
    for index in range(30):
        plan = generated.generated_plan(index)
        assert plan.split == synth.corpus.SPLIT_PATTERN[index % 10]
        assert plan.name == f"Track{index + 1:05d}" and plan.piece.startswith("generated/")


def test_arrange_track_from_either_source(monkeypatch):
    notes, info = generated.arrange_track(7, np.random.default_rng([0, 7]), 20.0, "generated")
    expected_notes, expected_info = _song(7, 20.0)
    assert _as_tuples(notes) == _as_tuples(expected_notes) and info == {**expected_info, "source": "generated"}

    toy = synth.Piece("toy", [[[72 - 7 * v, float(t), 1.0] for t in range(32)] for v in range(4)],
                      ["S", "A", "T", "B"], [synth.Bar(4.0 * i, 4.0, 4.0, 1.0, 4, 2, "4/4") for i in range(8)],
                      [], 32.0)
    monkeypatch.setattr(synth.corpus, "load_piece", lambda piece_id, cache_dir=None, parts=(4,): toy)
    plan = synth.TrackPlan(0, "Track00001", "train", "toy")
    notes, info = generated.arrange_track(plan, np.random.default_rng(1), 20.0, "corpus")
    corpus_notes, corpus_info = synth.arrange(toy, np.random.default_rng(1), 20.0)
    assert _as_tuples(notes) == _as_tuples(corpus_notes)
    assert info == {**corpus_info, "source": "corpus", "piece": "toy"}

    with pytest.raises(ValueError, match="source must be one of"):
        generated.arrange_track(plan, np.random.default_rng(1), 20.0, "radio")
    with pytest.raises(ValueError, match="TrackPlan"):
        generated.arrange_track(3, np.random.default_rng(1), 20.0, "corpus")


# ---------------------------------------------------------------- the parts

def test_roman_numerals_spell_the_chords_of_the_key():
    c = 0
    assert harmony.parse_roman("V7", c).pitch_classes == (2, 5, 7, 11)  # G B D F
    assert harmony.parse_roman("bVII", 9).pitch_classes == (2, 7, 11)  # G major in A minor
    assert harmony.parse_roman("iiø7", c).pitch_classes == (0, 2, 5, 8)  # D F Ab C
    first_inversion = harmony.parse_roman("V/3", c)
    assert first_inversion.root == 7 and first_inversion.bass == 11
    with pytest.raises(ValueError, match="Roman numeral"):
        harmony.parse_roman("H7", c)
    with pytest.raises(ValueError, match="no 7"):
        harmony.parse_roman("I/7", c)


def test_every_stock_and_functional_chord_parses_and_walks_end_on_a_dominant():
    for progressions in harmony.STOCK.values():
        for progression in progressions:
            [harmony.parse_roman(s, 0) for s in progression]
    rng = np.random.default_rng(0)
    for mode in harmony.MODES:
        for _ in range(20):
            walk = harmony.functional_walk(mode, 6, rng)
            family = "minor" if mode in ("minor", "dorian") else "major"
            assert walk[-1] in harmony.FUNCTIONS[family]["D"]
            assert all(a != b for a, b in zip(walk, walk[1:]))


@pytest.mark.parametrize("symbol", ["I", "ii7", "V7", "IVmaj7", "vi", "bVII", "Vsus4", "iiø7"])
def test_guitar_shapes_are_playable(symbol):
    chord = harmony.parse_roman(symbol, 4)  # E major
    for position in range(0, 10):
        fingering = textures.guitar_fingering(chord, position)
        shape = textures.guitar_shape(chord, position)
        assert shape == sorted(shape) and len(shape) >= 3
        assert shape[0] % 12 == chord.bass
        assert {p % 12 for p in shape} <= set(chord.pitch_classes)
        strings = [s for s, _ in fingering]
        assert strings == sorted(set(strings))  # one note per string
        fretted = [f for _, f in fingering if f > 0]
        assert max(fretted) - min(fretted) <= 4  # one hand position (open strings aside)


def test_piano_voicings_move_by_the_smallest_steps():
    c, f = harmony.parse_roman("I", 0), harmony.parse_roman("IV", 0)
    first = textures.close_voicing(c, 64, 3, None)
    assert sorted(p % 12 for p in first) == [0, 4, 7]
    second = textures.close_voicing(f, 64, 3, first)
    # C E G -> C F A: the common tone stays, the others move by a step.
    assert sum(abs(a - b) for a, b in zip(first, second)) <= 3


def test_a_genre_groove_plays_its_pattern():
    bars = [synth.Bar(4.0 * i, 4.0, 4.0, 1.0, 4, 2, "4/4") for i in range(8)]
    timeline = synth.Timeline(synth.Piece("g", [], [], bars, [], 32.0), 0.0, 1, 120.0)
    notes = grooves.genre_drum_notes("rock", timeline, np.random.default_rng(0), 60.0, [])
    # No phrase ends: bars 2-7 play the plain pattern: snare on 2 and 4, kick on 1.
    for bar in range(1, 7):
        start = bar * 2.0  # 2 s a bar at 120 BPM
        snares = sorted(round(n.on - start, 1) for n in notes if n.pitch == SNARE and start <= n.on < start + 1.99)
        kicks = [n for n in notes if n.pitch == KICK and abs(n.on - start) < 0.02]
        hats = [n for n in notes if n.pitch == CLOSED_HAT and start - 0.02 <= n.on < start + 1.98]
        assert snares == [0.5, 1.5] and kicks and len(hats) >= 7
    with pytest.raises(ValueError, match="unknown groove"):
        grooves.genre_groove("polka", np.random.default_rng(0))
    assert grooves.genres_for("3/4", 0.5) == () and "funk" not in grooves.genres_for("4/4", 60 / 200)
    assert TICKS_PER_QUARTER % 12 == 0  # triplet (shuffle) steps fall on ticks


def test_the_piano_roll_figure_is_written(tmp_path):
    from training.figures import plot_piano_rolls

    notes, info = _song(19)
    png = plot_piano_rolls([("song 19", notes), ("song 6", _song(6)[0])], tmp_path / "rolls.png", seconds=10.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no leftovers


def test_swing_moves_offbeat_eighths_to_the_last_triplet():
    assert [generated.swung(t) for t in (0.0, 0.5, 1.0, 1.5, 2.25, 3.75)] == pytest.approx(
        [0.0, 2 / 3, 1.0, 1 + 2 / 3, 2 + 1 / 3, 3 + 5 / 6])
    for i in range(40):
        notes, info = _song(i, 20.0)
        if info["style"]["drums"] == "shuffle" and info["time_signature"] == "4/4":
            spq = 60.0 / info["quarter_bpm"]
            positions = [(n.on / spq) % 1.0 for n in notes["bass"] + notes["piano"]]
            # no note sits on a straight off-beat eighth (0.5), within the 10 ms jitter
            assert not any(abs(p - 0.5) * spq < 0.02 for p in positions)
            return
    pytest.fail("no 4/4 shuffle among 40 songs")
