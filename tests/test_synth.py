"""The synthetic Slakh-like dataset: layout, exact mixes, splits by piece,
determinism and resuming. Renders three 4-second tracks (a few seconds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training import synth

STEMS = ("bass", "drums", "guitar", "piano")
MAX_SECONDS = 4.0

needs_fluidsynth = pytest.mark.skipif(
    shutil.which("fluidsynth") is None,
    reason="fluidsynth is not installed (apt-get install fluidsynth timgm6mb-soundfont)",
)


def _render(out: Path, seed: int = 0, jobs: int = 2, **kwargs) -> dict:
    return synth.render_dataset(out, tracks=3, seed=seed, max_seconds=MAX_SECONDS, jobs=jobs, **kwargs)


def _tracks(out: Path) -> list[Path]:
    return sorted(out.glob("*/Track*"), key=lambda p: p.name)


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    calls = []
    summary = _render(out, progress=lambda done, total: calls.append((done, total)))
    return out, summary, calls


@needs_fluidsynth
def test_layout_and_summary(dataset):
    out, summary, calls = dataset
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
    assert json.loads((out / "dataset.json").read_text()) == summary
    assert summary["tracks"] == 3 and summary["sample_rate"] == 22050
    assert {split: s["tracks"] for split, s in summary["splits"].items()} == {"train": 1, "valid": 1, "test": 1}
    tracks = _tracks(out)
    assert [t.name for t in tracks] == ["Track00001", "Track00002", "Track00003"]
    assert [t.parent.name for t in tracks] == ["train", "valid", "test"]
    for track in tracks:
        assert {p.name for p in track.glob("*.wav")} == {f"{s}.wav" for s in STEMS} | {"mix.wav"}
        meta = json.loads((track / "metadata.json").read_text())
        assert meta["split"] == track.parent.name and meta["seed"] == 0
        assert set(meta["programs"]) == set(STEMS)
        assert 32 <= meta["programs"]["bass"] <= 39 and 24 <= meta["programs"]["guitar"] <= 31
        assert 0 <= meta["programs"]["piano"] <= 7
        assert meta["piece"] and meta["tempo_bpm"] and "transpose" in meta


@needs_fluidsynth
def test_splits_are_disjoint_by_piece(dataset):
    _, summary, _ = dataset
    pieces = {split: set(s["pieces"]) for split, s in summary["splits"].items()}
    assert all(pieces.values())
    assert not (pieces["train"] & pieces["valid"] or pieces["train"] & pieces["test"]
                or pieces["valid"] & pieces["test"])
    # The same assignment holds when one piece gives several tracks.
    plans = synth.plan_tracks(2000, seed=0)
    split_of = {}
    for plan in plans:
        assert split_of.setdefault(plan.piece, plan.split) == plan.split
    assert [p.split for p in plans[:10]].count("train") == 8
    # A track's plan depends on the seed and its number only, so datasets can grow.
    assert plans[:3] == synth.plan_tracks(3, seed=0)


@needs_fluidsynth
def test_stems_are_mono_aligned_audible_and_sum_to_the_mix(dataset):
    out, _, _ = dataset
    for track in _tracks(out):
        audio = {}
        for name in STEMS + ("mix",):
            x, sr = sf.read(track / f"{name}.wav", dtype="float32", always_2d=True)
            assert sr == 22050 and x.shape[1] == 1, (track, name)
            assert sf.info(str(track / f"{name}.wav")).subtype == "FLOAT"
            audio[name] = x[:, 0]
        lengths = {len(x) for x in audio.values()}
        assert len(lengths) == 1 and 0.5 * MAX_SECONDS * sr <= lengths.pop() <= MAX_SECONDS * sr
        for stem in STEMS:
            assert np.sqrt(np.mean(audio[stem] ** 2)) > 1e-3, f"{track.name}/{stem} is silent"
        mix = ((audio["bass"] + audio["drums"]) + audio["guitar"]) + audio["piano"]
        assert mix.dtype == np.float32
        assert np.array_equal(mix, audio["mix"]), track
        assert np.abs(audio["mix"]).max() <= 0.9


@needs_fluidsynth
def test_same_seed_gives_identical_bytes(dataset, tmp_path):
    out, _, _ = dataset
    _render(tmp_path / "again", jobs=1)  # one process: output must not depend on jobs either
    assert _files(tmp_path / "again") == _files(out)


@needs_fluidsynth
def test_rerun_renders_nothing_new(dataset, monkeypatch):
    out, summary, _ = dataset
    before = _files(out)
    stale = out / "train" / "Track00001.tmp-interrupted"  # what a killed run leaves
    stale.mkdir()

    def no_render(job):
        raise AssertionError(f"{job.plan.name} rendered again")

    monkeypatch.setattr(synth, "render_track", no_render)
    calls = []
    assert _render(out, jobs=1, progress=lambda d, t: calls.append((d, t))) == summary
    assert calls == [(3, 3)]
    assert not stale.exists()
    assert _files(out) == before


@needs_fluidsynth
def test_rerun_with_other_settings_is_refused(dataset):
    out, _, _ = dataset
    with pytest.raises(synth.SynthError, match="other settings"):
        _render(out, seed=1, jobs=1)


def test_missing_soundfont_names_the_packages(tmp_path):
    with pytest.raises(synth.SynthError) as error:
        synth.find_soundfont(str(tmp_path / "missing.sf2"))
    assert "timgm6mb-soundfont" in str(error.value) and "missing.sf2" in str(error.value)
    if shutil.which("fluidsynth"):
        with pytest.raises(synth.SynthError, match="timgm6mb-soundfont"):
            synth.render_dataset(tmp_path / "ds", 1, soundfont=str(tmp_path / "missing.sf2"))


def test_missing_fluidsynth_names_the_packages(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(synth.SynthError, match="apt-get install fluidsynth timgm6mb-soundfont"):
        synth.render_dataset("/nonexistent/never-created", 1)


def _toy_piece(beats: int, bars: int = 12) -> synth.Piece:
    """Four voices of quarter notes in beats/4, no corpus needed."""
    voices = [[[72 - 7 * v, float(t), 1.0] for t in range(beats * bars)] for v in range(4)]
    meter = [synth.Bar(float(i * beats), float(beats), float(beats), 1.0, beats, 2, f"{beats}/4") for i in range(bars)]
    return synth.Piece("toy", voices, ["S", "A", "T", "B"], meter, [], float(beats * bars))


@pytest.mark.parametrize("beats", [3, 4])
def test_drums_follow_the_meter(beats):
    piece = _toy_piece(beats)
    timeline = synth.Timeline(piece, start=0.0, loops=1, quarter_bpm=120.0)  # a quarter is 0.5 s
    for seed in range(5):
        notes = synth.drum_notes(timeline, np.random.default_rng(seed), 60.0, synth.drums._phrase_ends(piece, timeline))
        quarters = np.array([n.on / 0.5 for n in notes])
        # Everything on the sixteenth grid (a few ms of humanising allowed).
        assert np.all(np.abs(quarters * 4 - np.round(quarters * 4)) < 0.2)
        kicks = np.array([n.on / 0.5 for n in notes if n.pitch == synth.KICK])
        for bar in range(12):  # a kick on every downbeat
            assert np.min(np.abs(kicks - bar * beats)) < 0.05, (seed, bar)
        # Loud snares (not ghost notes) on beats: backbeats, never the downbeat.
        snares = (synth.SNARE, synth.SNARE_2, synth.SIDE_STICK)
        on_beats = [round(q) for q, n in zip(quarters, notes, strict=True)
                    if abs(q - round(q)) < 0.05 and n.velocity > 60 and n.pitch in snares]
        assert on_beats and all(q % beats != 0 for q in on_beats)
        assert len({q // beats for q in on_beats}) >= 9  # all 12 bars but the ending and the two fills
        assert all(n.channel == synth.DRUM_CHANNEL and 1 <= n.velocity <= 127 for n in notes)


def test_an_unusable_piece_falls_back_within_its_split(monkeypatch):
    plan = synth.TrackPlan(0, "Track00001", "valid", "bad/piece.krn", ("good/piece.mxl",))

    def fake_load(piece_id, cache_dir=None, parts=(4,)):
        if piece_id.startswith("bad"):
            raise synth.UnusablePiece("2 of its parts have notes, not 4")
        return _toy_piece(4)

    monkeypatch.setattr(synth.corpus, "load_piece", fake_load)
    assert synth.corpus.first_usable_piece(plan, Path("unused")).id == "toy"
    monkeypatch.setattr(synth.corpus, "load_piece", lambda *a: (_ for _ in ()).throw(synth.UnusablePiece("empty")))
    with pytest.raises(synth.SynthError, match="no usable piece"):
        synth.corpus.first_usable_piece(plan, Path("unused"))


@needs_fluidsynth
def test_asking_for_more_tracks_renders_only_the_new_ones(dataset, tmp_path):
    out, _, _ = dataset
    grown = tmp_path / "grown"
    shutil.copytree(out, grown)
    before = _files(grown)
    calls = []
    summary = synth.render_dataset(grown, tracks=4, seed=0, max_seconds=MAX_SECONDS, jobs=1,
                                   progress=lambda d, t: calls.append((d, t)))
    assert calls == [(3, 4), (4, 4)] and summary["tracks"] == 4
    after = _files(grown)
    assert all(after[name] == data for name, data in before.items() if name.startswith(("train", "valid", "test")))
    assert (grown / "train" / "Track00004" / "mix.wav").is_file()


def test_drum_hits_sit_on_integer_ticks_even_at_odd_bar_lines():
    """A 6/8 bar starting at 60 + 187/384 quarters (a bar line the corpus
    really has): every hit is an integer tick, inside the bar, and on a third
    of the dotted-quarter beat, exactly (no float tolerance to get wrong)."""
    drums = synth.drums
    offset = 60 + 187 / 384
    bar = synth.Bar(offset, 3.0, 3.0, 1.5, 2, 3, "6/8")
    style = drums.DrumStyle(hat=drums.CLOSED_HAT, hat_sub=3, snare=drums.SNARE, half_time=False, waltz=False,
                            kick_extra=1.0, ghost=0.5, open_hat=0.5, fill=1.0, level=1.0)
    hits = drums._groove(bar, 0, style, np.random.default_rng(0))
    begin, third = drums.ticks(offset), drums.ticks(1.5) // 3
    assert drums.ticks(1.5) % 3 == 0 and begin == offset * drums.TICKS_PER_QUARTER
    assert len(hits) >= 2 * 3 + 2  # hats on every third, kick and snare on the beats
    for tick, _key, _velocity in hits:
        assert isinstance(tick, int)
        assert begin <= tick < begin + drums.ticks(3.0)
        assert (tick - begin) % third == 0
