"""The timbre-diverse data engine (training.synth.timbres): what each plan may
draw, real renders of both plans, and a failing track skipped, not fatal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training import synth
from training.synth import dataset as dataset_module
from training.synth import timbres
from training.synth.corpus import MidiNote
from training.synth.instruments import HOLDOUT_FAMILIES, HOLDOUT_KITS
from training.synth.sampler import SAMPLES_ENV

SR = 22050

needs_fluidsynth = pytest.mark.skipif(shutil.which("fluidsynth") is None or not timbres.installed(timbres.TRAINING_SOUNDFONTS),
                                      reason="needs fluidsynth and a training SoundFont (apt-get install fluidsynth "
                                             "timgm6mb-soundfont)")


@pytest.fixture
def no_samples(tmp_path, monkeypatch):
    """No sampled instruments installed: the draws do not depend on this machine's cache."""
    monkeypatch.setenv(SAMPLES_ENV, str(tmp_path / "no-samples"))


@pytest.fixture
def sample_library(tmp_path, monkeypatch) -> Path:
    """One sampled piano (a decaying sine at C4) installed under $MSDM_SAMPLES."""
    folder = tmp_path / "samples" / "test-piano"
    folder.mkdir(parents=True)
    t = np.arange(SR * 2) / SR
    sf.write(str(folder / "c4.wav"), (0.5 * np.sin(2 * np.pi * 261.63 * t) * np.exp(-t)).astype(np.float32), SR)
    (folder / "instrument.json").write_text(json.dumps({
        "name": "test-piano", "stem": "piano", "kind": "pitched", "release_s": 0.1,
        "zones": [{"file": "c4.wav", "root": 60, "velocity": [1, 127]}]}))
    monkeypatch.setenv(SAMPLES_ENV, str(tmp_path / "samples"))
    return folder


@pytest.mark.parametrize("stem", ["bass", "drums", "guitar", "piano"])
def test_diverse_plan_never_draws_held_out_timbres(stem, no_samples):
    held_out = {str(p) for p in timbres.HOLDOUT_SOUNDFONTS}
    sources = set()
    for i in range(400):
        timbre = timbres.draw_timbre(stem, np.random.default_rng([0, i]), "diverse")
        assert not timbre.holdout and timbre.soundfont not in held_out
        sources.add(timbre.source if timbre.source == "synth" else timbre.soundfont)
        if timbre.source == "soundfont" and stem != "drums":
            assert timbre.program in synth.arrangement.PROGRAMS[stem]
    # Synthesised and every installed SoundFont of the stem's kind.
    fonts = timbres.installed(timbres.TRAINING_SOUNDFONTS + (timbres.DRUM_SOUNDFONTS if stem == "drums" else ()))
    assert sources == {"synth", *map(str, fonts)}


def test_installed_sampled_instruments_are_drawn_for_their_stem_only(sample_library):
    for stem in ("piano", "guitar"):
        draws = [timbres.draw_timbre(stem, np.random.default_rng([0, i]), "diverse") for i in range(400)]
        sampled = [t for t in draws if t.source == "sampled"]
        if stem == "piano":
            # SAMPLED_SHARE of the draws, within binomial noise (sd ~7 of 400).
            assert abs(len(sampled) - 400 * timbres.SAMPLED_SHARE) < 30
            assert {t.soundfont for t in sampled} == {"test-piano"}
        else:
            assert sampled == []
    for i in range(200):
        assert timbres.draw_timbre("piano", np.random.default_rng([1, i]), "holdout").source != "sampled"


def test_recorded_plan_draws_installed_instruments_for_most_stems_and_falls_back_to_diverse(sample_library):
    piano = [timbres.draw_timbre("piano", np.random.default_rng([2, i]), "recorded") for i in range(400)]
    sampled = [t for t in piano if t.source == "sampled"]
    # RECORDED_SHARE first, then the diverse draw's own SAMPLED_SHARE of the rest (sd ~10 of 400).
    expected = 400 * (timbres.RECORDED_SHARE + (1 - timbres.RECORDED_SHARE) * timbres.SAMPLED_SHARE)
    assert abs(len(sampled) - expected) < 40 and {t.soundfont for t in sampled} == {"test-piano"}
    assert {t.source for t in piano} >= {"sampled", "synth"}
    # No recorded guitar installed: exactly the diverse plan's draws from the same stream.
    guitar = [timbres.draw_timbre("guitar", np.random.default_rng([3, i]), "recorded") for i in range(100)]
    assert guitar == [timbres.draw_timbre("guitar", np.random.default_rng([3, i]), "diverse") for i in range(100)]


def test_held_out_recorded_instruments_are_drawn_only_by_the_holdout_recorded_plan(sample_library):
    held_out = sample_library.parent / timbres.HOLDOUT_SAMPLED[2]  # the held-out piano's name
    shutil.copytree(sample_library, held_out)
    manifest = json.loads((held_out / "instrument.json").read_text())
    (held_out / "instrument.json").write_text(json.dumps({**manifest, "name": held_out.name}))
    for plan in ("diverse", "recorded"):
        drawn = {timbres.draw_timbre("piano", np.random.default_rng([4, i]), plan).soundfont for i in range(300)}
        assert "test-piano" in drawn and held_out.name not in drawn
    for i in range(50):
        timbre = timbres.draw_timbre("piano", np.random.default_rng([5, i]), "holdout-recorded")
        assert timbre == timbres.Timbre("sampled", held_out.name, holdout=True)
        # No recorded kit is held out: drums are the held-out plan's.
        drums = timbres.draw_timbre("drums", np.random.default_rng([5, i]), "holdout-recorded")
        assert drums.holdout and drums.source != "sampled"
    assert dataset_module.installed_sampled_instruments("holdout-recorded") == [held_out.name]
    assert dataset_module.installed_sampled_instruments("recorded") == ["test-piano"]


def test_holdout_recorded_refuses_to_render_without_its_instruments(tmp_path, sample_library):
    with pytest.raises(synth.SynthError, match="held-out recorded instruments .* not installed"):
        synth.render_dataset(tmp_path / "d", tracks=1, seed=0, timbres="holdout-recorded", jobs=1)
    assert not (tmp_path / "d" / "dataset.json").exists()


def test_a_plan_refuses_to_render_without_its_soundfonts(tmp_path, monkeypatch, no_samples):
    # A plan draws among the installed fonts: without one, the documented command
    # would quietly render another dataset (found on a fresh machine with only TimGM6mb).
    monkeypatch.setattr(timbres, "TRAINING_SOUNDFONTS", (*timbres.TRAINING_SOUNDFONTS, tmp_path / "Absent_GM.sf2"))
    for plan in ("diverse", "recorded"):
        with pytest.raises(synth.SynthError, match=r"Absent_GM\.sf2.*--partial-timbres"):
            synth.render_dataset(tmp_path / plan, tracks=1, seed=0, timbres=plan, jobs=1)
        assert not (tmp_path / plan / "dataset.json").exists()
    monkeypatch.setattr(timbres, "HOLDOUT_SOUNDFONTS", (tmp_path / "Absent_Holdout.sf3",))
    with pytest.raises(synth.SynthError, match=r"Absent_Holdout\.sf3"):
        synth.render_dataset(tmp_path / "h", tracks=1, seed=0, timbres="holdout", jobs=1)
    # The four-SoundFont plan takes its own list and is not concerned.
    assert timbres.missing_plan_soundfonts("soundfonts") == []


def test_a_sampled_stem_renders_its_notes(sample_library, tmp_path):
    notes = [MidiNote(0, 60, 0.1, 0.6, 100), MidiNote(0, 67, 0.7, 1.2, 90)]
    audio, meta = timbres.render_timbre(timbres.Timbre("sampled", "test-piano"), "piano", notes, 1.5, SR * 3 // 2,
                                        SR, tmp_path, "fluidsynth", np.random.default_rng(0))
    assert meta["source"] == "sampled" and meta["instrument"] == "test-piano"
    assert audio.shape[0] >= SR * 3 // 2
    assert np.sqrt(np.mean(audio[: SR // 20] ** 2)) < 1e-6 < np.sqrt(np.mean(audio[SR // 5: SR // 2] ** 2))


def test_holdout_plan_draws_only_held_out_timbres():
    for i in range(200):
        timbre = timbres.draw_timbre("guitar", np.random.default_rng([1, i]), "holdout")
        assert timbre.holdout
        assert timbre.source == "synth" or timbre.soundfont in {str(p) for p in timbres.HOLDOUT_SOUNDFONTS}


@needs_fluidsynth
def test_diverse_tracks_render_and_sum(tmp_path, no_samples):
    summary = synth.render_dataset(tmp_path / "d", tracks=3, seed=0, max_seconds=13.0, jobs=1,
                                   timbres="diverse", music="mixed", partial_timbres=True)
    assert summary["timbres"] == "diverse" and summary["skipped"] == []
    folders = sorted(p for split in ("train", "valid", "test") for p in (tmp_path / "d" / split).iterdir())
    assert len(folders) == 3
    for folder in folders:
        meta = json.loads((folder / "metadata.json").read_text())
        assert set(meta["instruments"]) == {"bass", "drums", "guitar", "piano"}
        stems = [sf.read(str(folder / f"{s}.wav"), dtype="float32")[0] for s in ("bass", "drums", "guitar", "piano")]
        mix = sf.read(str(folder / "mix.wav"), dtype="float32")[0]
        np.testing.assert_array_equal(((stems[0] + stems[1]) + stems[2]) + stems[3], mix)
        assert all(np.sqrt(np.mean(s ** 2)) > 1e-4 for s in stems)
        for stem, info in meta["instruments"].items():
            assert info.get("family") not in (HOLDOUT_KITS if stem == "drums" else HOLDOUT_FAMILIES)


@needs_fluidsynth
def test_a_failing_track_is_skipped_and_listed(tmp_path, monkeypatch, no_samples):
    real = dataset_module.render_track

    def flaky(job):
        if job.plan.index == 1:
            raise synth.SynthError("fluidsynth did not finish bass.mid within 120 s")
        return real(job)

    monkeypatch.setattr(dataset_module, "render_track", flaky)
    summary = synth.render_dataset(tmp_path / "d", tracks=3, seed=0, max_seconds=13.0, jobs=1,
                                   timbres="diverse", partial_timbres=True)
    assert summary["skipped"] == ["Track00002: fluidsynth did not finish bass.mid within 120 s"]
    assert summary["tracks"] == 2
    assert not (tmp_path / "d" / "valid" / "Track00002").exists()
