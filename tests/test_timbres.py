"""The timbre-diverse data engine (training.synth.timbres): what each plan may
draw, real renders of both plans, and a failing track skipped, not fatal."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from training import synth
from training.synth import dataset as dataset_module
from training.synth import timbres
from training.synth.instruments import HOLDOUT_FAMILIES, HOLDOUT_KITS

needs_fluidsynth = pytest.mark.skipif(shutil.which("fluidsynth") is None or not timbres.installed(timbres.TRAINING_SOUNDFONTS),
                                      reason="needs fluidsynth and a training SoundFont (apt-get install fluidsynth "
                                             "timgm6mb-soundfont)")


@pytest.mark.parametrize("stem", ["bass", "drums", "guitar", "piano"])
def test_diverse_plan_never_draws_held_out_timbres(stem):
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


def test_holdout_plan_draws_only_held_out_timbres():
    for i in range(200):
        timbre = timbres.draw_timbre("guitar", np.random.default_rng([1, i]), "holdout")
        assert timbre.holdout
        assert timbre.source == "synth" or timbre.soundfont in {str(p) for p in timbres.HOLDOUT_SOUNDFONTS}


@needs_fluidsynth
def test_diverse_tracks_render_and_sum(tmp_path):
    summary = synth.render_dataset(tmp_path / "d", tracks=3, seed=0, max_seconds=13.0, jobs=1,
                                   timbres="diverse", music="mixed")
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
def test_a_failing_track_is_skipped_and_listed(tmp_path, monkeypatch):
    real = dataset_module.render_track

    def flaky(job):
        if job.plan.index == 1:
            raise synth.SynthError("fluidsynth did not finish bass.mid within 120 s")
        return real(job)

    monkeypatch.setattr(dataset_module, "render_track", flaky)
    summary = synth.render_dataset(tmp_path / "d", tracks=3, seed=0, max_seconds=13.0, jobs=1,
                                   timbres="diverse")
    assert summary["skipped"] == ["Track00002: fluidsynth did not finish bass.mid within 120 s"]
    assert summary["tracks"] == 2
    assert not (tmp_path / "d" / "valid" / "Track00002").exists()
