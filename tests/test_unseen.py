"""`msdm dataset unseen`: material reserved for evaluation. Training never
reaches it; a rendered track has the synthetic dataset's layout, an exact mix,
pitched stems that TiMidity++ renders again bit for bit and a drum stem that
the Hydrogen kit's samples rebuild exactly; a bad sample skips its track (listed)
and a rerun resumes. Renders 6-second tracks (a few seconds each)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.synth import corpus, hydrogen, rendering, reserved, timidity, unseen
from training.synth.corpus import MidiNote, SynthError

STEMS = ("bass", "drums", "guitar", "piano")
SECONDS = 6.0

needs_renderer = pytest.mark.skipif(
    shutil.which("timidity") is None or not timidity.FREEPATS_CONFIG.is_file() or not hydrogen.KITS_FOLDER.is_dir(),
    reason="the reserved renderer is not installed (apt-get install timidity freepats hydrogen-drumkits)",
)


# --------------------------------------------------------------------------- #
# Reserved material stays out of training
# --------------------------------------------------------------------------- #

def test_training_corpus_never_includes_reserved_composers():
    assert not set(corpus.COMPOSERS) & set(reserved.RESERVED_COMPOSERS)
    pieces = corpus.candidate_pieces()
    assert pieces, "the training corpus is empty"
    assert not [p for p in pieces if p.split("/")[0] in reserved.RESERVED_COMPOSERS]


def test_training_soundfonts_are_not_reserved_sounds():
    for candidate in rendering.SOUNDFONT_CANDIDATES:
        resolved = str(Path(candidate).resolve())
        assert not any(resolved.startswith(folder) for folder in reserved.RESERVED_SOUND_FOLDERS), candidate
        assert "freepats" not in resolved.lower() and "timidity" not in resolved.lower()


def test_reserved_pieces_are_only_reserved_composers_with_four_to_six_parts():
    pieces = unseen.reserved_pieces()
    assert {p.split("/")[0] for p in pieces} == set(reserved.RESERVED_COMPOSERS)
    assert not set(pieces) & set(corpus.candidate_pieces())
    assert all(p.endswith((".mxl", ".abc")) and "_old" not in p for p in pieces)


def test_a_josquin_chanson_is_one_piece_of_its_voices_and_four_are_kept():
    """An ABC file holds one tune per voice; load_piece merges them, lowest voice last."""
    piece = corpus.load_piece("josquin/laDeplorationDeLaMorteDeJohannesOckeghem.abc", parts=tuple(range(4, unseen.MAX_PARTS + 1)))
    assert len(piece.voices) == 5
    means = [np.mean([n[0] for n in v]) for v in piece.voices]
    assert means == sorted(means, reverse=True)
    four, dropped = unseen.four_voices(piece, np.random.default_rng(0))
    assert len(four.voices) == 4 and len(dropped) == 1
    assert four.voices[3] is piece.voices[4]  # the bass stays the bass
    assert dropped[0] in piece.names[:4] and dropped[0] not in four.names
    with pytest.raises(corpus.UnusablePiece, match="not 4"):  # training's loader keeps to 4 parts
        corpus._extract(__import__("music21").corpus.parse("josquin/laDeplorationDeLaMorteDeJohannesOckeghem.abc"))


# --------------------------------------------------------------------------- #
# The pieces of the renderer
# --------------------------------------------------------------------------- #

@needs_renderer
def test_freepats_programs_are_those_with_a_patch_file():
    have = timidity.available_programs(timidity.FREEPATS_CONFIG)
    assert 0 in have and 24 in have and 32 in have
    assert 3 not in have and 31 not in have and 39 not in have  # freepats has no patch for these


@needs_renderer
def test_every_usable_kit_maps_every_key_the_drum_part_plays():
    kits = hydrogen.drum_kits()
    assert len(kits) >= 5
    folders = {k.folder.name for k in kits}
    assert "The Black Pearl 1.0" in folders and "circAfrique v4" not in folders  # djembes are not a drum kit
    for kit in kits:
        assert set(kit.keys) >= {36, 37, 38, 40, 42, 44, 46, 49, 51, 41, 43, 45, 47, 48, 50}
        assert kit.keys[36].role == "kick" and kit.keys[38].role == "snare" and kit.keys[42].role == "hat_closed"
        assert kit.license


def test_instrument_names_map_to_roles():
    assert hydrogen.role_of("Kick (Tama Superstar 22\")") == "kick"
    assert hydrogen.role_of("c3 - bass drum 1") == "kick"
    assert hydrogen.role_of("Sabian Hat Semi-Open") == "hat_open"
    assert hydrogen.role_of("Pedal HH") == "hat_pedal"
    assert hydrogen.role_of("Hi Hat Closed") == "hat_closed"
    assert hydrogen.role_of("Pearl Side Stick") == "stick"
    assert hydrogen.role_of("Snare Rimshot (Pearl)") == "snare"
    assert hydrogen.role_of("Snare Roll") is None and hydrogen.role_of("Paiste Bell") is None
    assert hydrogen.role_of("Floor Tom") == "tom" and hydrogen.role_of("Crash/Ride 18\"") == "crash"


def _write_kit(folder: Path, sr: int) -> dict[str, np.ndarray]:
    """A two-instrument kit in Hydrogen's format (velocity layers, a hi-hat mute group)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    samples = {name: rng.uniform(-0.5, 0.5, n).astype(np.float32)
               for name, n in (("soft", 300), ("hard", 400), ("hat", 500), ("open", 2000), ("crash", 800))}
    for name, x in samples.items():
        sf.write(folder / f"{name}.wav", x, sr, subtype="FLOAT")
    instrument = ("<instrument><name>{name}</name><volume>{vol}</volume><gain>1</gain><muteGroup>{group}</muteGroup>"
                  "{layers}</instrument>")
    layer = "<layer><filename>{f}.wav</filename><min>{lo}</min><max>{hi}</max><gain>{g}</gain><pitch>0</pitch></layer>"
    xml = ("<drumkit_info xmlns='http://www.hydrogen-music.org/drumkit'><name>Test</name><license>CC0</license>"
           "<instrumentList>"
           + instrument.format(name="Kick", vol=0.5, group=-1, layers=layer.format(f="soft", lo=0, hi=0.5, g=1)
                               + layer.format(f="hard", lo=0.5, hi=1, g=2))
           + instrument.format(name="Snare", vol=1, group=-1, layers=layer.format(f="soft", lo=0, hi=1, g=1))
           + instrument.format(name="Closed HH", vol=1, group=-1, layers=layer.format(f="hat", lo=0, hi=1, g=1))
           + instrument.format(name="Open HH", vol=1, group=-1, layers=layer.format(f="open", lo=0, hi=1, g=1))
           + instrument.format(name="Crash", vol=1, group=-1, layers=layer.format(f="crash", lo=0, hi=1, g=1))
           + "</instrumentList></drumkit_info>")
    (folder / "drumkit.xml").write_text(xml)
    return samples


def test_play_adds_the_velocity_layer_samples_at_the_hits_and_chokes_the_open_hat(tmp_path):
    sr = 22050
    samples = _write_kit(tmp_path / "Test", sr)
    kit = hydrogen.read_kit(tmp_path / "Test")
    assert kit is not None and kit.license == "CC0"
    notes = [MidiNote(9, 36, 100 / sr, 0.5, 40),  # soft layer (40/127 < 0.5)
             MidiNote(9, 36, 200 / sr, 0.5, 127),  # hard layer, gain 2, overlapping the first
             MidiNote(9, 46, 1000 / sr, 0.5, 127),  # open hat, choked by the closed hat at 1500
             MidiNote(9, 42, 1500 / sr, 0.5, 127)]
    out, used = hydrogen.play(kit, notes, 4000, sr)
    expected = np.zeros(4000)
    expected[100:400] += samples["soft"] * (40 / 127) * 0.5
    expected[200:600] += samples["hard"] * 1.0 * 0.5 * 2
    fade = int(hydrogen.CHOKE_SECONDS * sr)
    opened = samples["open"][:500].astype(np.float64)
    opened[-fade:] *= np.linspace(1.0, 0.0, fade)
    expected[1000:1500] += opened
    expected[1500:2000] += samples["hat"]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert {Path(u).name for u in used} == {"soft.wav", "hard.wav", "open.wav", "hat.wav"}


def test_an_unreadable_sample_is_a_clear_error(tmp_path):
    _write_kit(tmp_path / "Test", 22050)
    (tmp_path / "Test" / "hard.wav").write_bytes(b"not audio")
    kit = hydrogen.read_kit(tmp_path / "Test")
    with pytest.raises(SynthError, match="cannot read the drum sample .*hard.wav"):
        hydrogen.play(kit, [MidiNote(9, 36, 0.0, 0.5, 127)], 1000, 22050)


@needs_renderer
def test_timidity_past_its_timeout_is_stopped(tmp_path):
    midi = tmp_path / "long.mid"
    rendering.write_midi(midi, [MidiNote(0, 60, 0.0, 1200.0, 100)], 0, 1200.0)
    with pytest.raises(SynthError, match="ran past"):
        timidity.render_midi(timidity.find_timidity(), timidity.FREEPATS_CONFIG, midi, tmp_path / "out.wav",
                             22050, timeout=0.01)


# --------------------------------------------------------------------------- #
# One rendered track
# --------------------------------------------------------------------------- #

@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("unseen") / "ds"
    calls = []
    summary = unseen.render_unseen(out, tracks=1, seed=0, max_seconds=SECONDS, jobs=1,
                                   progress=lambda done, total: calls.append((done, total)))
    return out, summary, calls


def _read_midi(path: Path) -> list[MidiNote]:
    """Note-ons of a file written by rendering.write_midi (2000 ticks per second)."""
    import mido

    notes, tick = [], 0
    for message in mido.MidiFile(str(path)).tracks[0]:
        tick += message.time
        if message.type == "note_on" and message.velocity > 0:
            notes.append(MidiNote(message.channel, message.note, tick / unseen.MIDI_TICKS_PER_SECOND, 0.0,
                                  message.velocity))
    return notes


def _scale_to(reference: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x scaled by the least-squares gain onto reference (a stem is its render times one gain)."""
    x = x.astype(np.float64)
    return x * (np.dot(reference, x) / np.dot(x, x))


@needs_renderer
def test_layout_summary_and_exact_mix(rendered):
    out, summary, calls = rendered
    assert calls[0] == (0, 1) and calls[-1] == (1, 1)
    assert json.loads((out / "dataset.json").read_text()) == summary
    assert summary["splits"]["test"]["tracks"] == 1 and summary["skipped"] == []
    assert summary["tools"]["timidity"].startswith("TiMidity++")
    assert set(summary["tools"]["packages"]) == set(reserved.RESERVED_TOOLS)
    assert set(summary["tools"]["licences"]) == set(reserved.RESERVED_TOOLS)
    assert "evaluation only" in summary["reserved"]
    track = out / "test" / "Track00001"
    assert sorted(p.name for p in (out / "test").iterdir()) == ["Track00001"]
    assert {p.name for p in track.glob("*.wav")} == {f"{s}.wav" for s in STEMS} | {"mix.wav"}
    meta = json.loads((track / "metadata.json").read_text())
    assert meta["composer"] in reserved.RESERVED_COMPOSERS and meta["split"] == "test"
    assert meta["drum_kit"]["folder"] in summary["drum_kits"]
    audio = {}
    for name in (*STEMS, "mix"):
        info = sf.info(str(track / f"{name}.wav"))
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "FLOAT")
        audio[name] = sf.read(str(track / f"{name}.wav"), dtype="float32")[0]
        assert len(audio[name]) == meta["frames"] == round(SECONDS * 22050)
    mix = ((audio["bass"] + audio["drums"]) + audio["guitar"]) + audio["piano"]
    assert np.array_equal(mix, audio["mix"])
    for stem in STEMS:
        assert np.sqrt(np.mean(audio[stem] ** 2)) > 1e-3, f"{stem} is silent"


@needs_renderer
def test_pitched_stems_are_timidity_renders_of_their_midi(rendered, tmp_path):
    out, _, _ = rendered
    track = out / "test" / "Track00001"
    meta = json.loads((track / "metadata.json").read_text())
    for stem in ("bass", "guitar", "piano"):
        again, _ = timidity.render_midi(timidity.find_timidity(), timidity.FREEPATS_CONFIG,
                                        track / "midi" / f"{stem}.mid", tmp_path / f"{stem}.wav", 22050, 60)
        again = rendering._fit(again, meta["frames"], 22050)
        stored = sf.read(str(track / f"{stem}.wav"), dtype="float32")[0].astype(np.float64)
        np.testing.assert_allclose(_scale_to(stored, again), stored, atol=1e-5 * np.abs(stored).max())
        # ...and not what the training renderer (fluidsynth) makes of the same MIDI.
        if shutil.which("fluidsynth"):
            other = rendering._fit(rendering.render_stem(shutil.which("fluidsynth"), rendering.find_soundfont(),
                                                         track / "midi" / f"{stem}.mid", tmp_path / "fs.wav", 22050),
                                   meta["frames"], 22050)
            residual = stored - _scale_to(stored, other)
            assert np.sqrt(np.mean(residual ** 2)) > 0.1 * np.sqrt(np.mean(stored ** 2))


@needs_renderer
def test_drum_stem_is_the_kits_samples_at_the_midi_hits(rendered):
    out, _, _ = rendered
    track = out / "test" / "Track00001"
    meta = json.loads((track / "metadata.json").read_text())
    kit = hydrogen.read_kit(hydrogen.KITS_FOLDER / meta["drum_kit"]["folder"])
    notes = _read_midi(track / "midi" / "drums.mid")
    assert len(notes) > 4
    replayed, used = hydrogen.play(kit, notes, meta["frames"], 22050)
    replayed = rendering._fit(replayed, meta["frames"], 22050)
    stored = sf.read(str(track / "drums.wav"), dtype="float32")[0].astype(np.float64)
    np.testing.assert_allclose(_scale_to(stored, replayed), stored, atol=1e-5 * np.abs(stored).max())
    assert sorted(Path(u).name for u in used) == meta["drum_samples"]


@needs_renderer
def test_same_seed_same_track_and_a_rerun_keeps_it(rendered, tmp_path):
    out, summary, _ = rendered
    again = tmp_path / "again"
    unseen.render_unseen(again, tracks=1, seed=0, max_seconds=SECONDS, jobs=1)
    for name in (*STEMS, "mix"):
        assert (again / "test/Track00001" / f"{name}.wav").read_bytes() == (out / "test/Track00001" / f"{name}.wav").read_bytes()
    before = (again / "test/Track00001/mix.wav").stat().st_mtime_ns
    (again / "test" / "Track00002.tmp-stale").mkdir()  # left by an interrupted run
    unseen.render_unseen(again, tracks=1, seed=0, max_seconds=SECONDS, jobs=1)
    assert (again / "test/Track00001/mix.wav").stat().st_mtime_ns == before
    assert not (again / "test" / "Track00002.tmp-stale").exists()
    with pytest.raises(SynthError, match="other settings"):
        unseen.render_unseen(again, tracks=1, seed=1, max_seconds=SECONDS, jobs=1)


@needs_renderer
def test_a_bad_sample_skips_its_track_lists_it_and_a_rerun_resumes(tmp_path):
    """Every kit but one small one, with its samples broken: the tracks that
    draw it are skipped and listed, the others written; repaired, a rerun
    renders only the skipped ones."""
    kits = tmp_path / "kits"
    kits.mkdir()
    for name in ("Audiophob", "Millo-Drums_v.1"):
        shutil.copytree(hydrogen.KITS_FOLDER / name, kits / name)
    broken = sorted((kits / "Audiophob").glob("*.flac")) + sorted((kits / "Audiophob").glob("*.wav"))
    originals = {p: p.read_bytes() for p in broken}
    for p in broken:
        p.write_bytes(b"not audio")
    hydrogen.drum_kits.cache_clear()
    out = tmp_path / "ds"
    summary = unseen.render_unseen(out, tracks=4, seed=0, max_seconds=3.0, jobs=1, kits_folder=kits)
    skipped = {s["track"] for s in summary["skipped"]}
    made = {p.name for p in (out / "test").iterdir()}
    assert skipped and made and not skipped & made and skipped | made == {f"Track{i:05d}" for i in range(1, 5)}
    assert all("cannot read the drum sample" in s["error"] and "Audiophob" in s["error"] for s in summary["skipped"])
    assert json.loads((out / "dataset.json").read_text())["skipped"] == summary["skipped"]
    kept = {name: (out / "test" / name / "mix.wav").stat().st_mtime_ns for name in made}

    for p, data in originals.items():
        p.write_bytes(data)
    hydrogen.load_sample.cache_clear()
    summary = unseen.render_unseen(out, tracks=4, seed=0, max_seconds=3.0, jobs=1, kits_folder=kits)
    assert summary["skipped"] == [] and summary["splits"]["test"]["tracks"] == 4
    assert {name: (out / "test" / name / "mix.wav").stat().st_mtime_ns for name in made} == kept


@needs_renderer
def test_command_line_renders_and_reports(tmp_path, capsys):
    from engine.cli import main

    assert main(["dataset", "unseen", "--out", str(tmp_path / "ds"), "--tracks", "1", "--max-seconds", "3",
                 "--jobs", "1", "-q"]) == 0
    assert "1 test tracks" in capsys.readouterr().out
    assert (tmp_path / "ds" / "test" / "Track00001" / "mix.wav").is_file()
