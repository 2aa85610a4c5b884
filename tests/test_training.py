"""Datasets (Slakh layouts, folders of stems) and training, including 2-process DDP on CPU."""

from __future__ import annotations

import subprocess
import sys

import re

import numpy as np
import pytest
import soundfile as sf
import torch

from engine.storage.model import MSDMModel
from training.data import DatasetError, StemCrops, detect_layout, infer_stems, read_stems, scan
from training.train import edm_loss

SLAKH_METADATA = """
audio_dir: stems
stems:
  S00: {inst_class: Bass, is_drum: false, program_num: 33, audio_rendered: true}
  S01: {inst_class: Drums, is_drum: true, program_num: 0, audio_rendered: true}
  S02: {inst_class: Piano, is_drum: false, program_num: 0, audio_rendered: true}
  S03: {inst_class: Piano, is_drum: false, program_num: 4, audio_rendered: true}
  S04: {inst_class: Strings, is_drum: false, program_num: 48, audio_rendered: true}
  S05: {inst_class: Guitar, is_drum: false, program_num: 25, audio_rendered: false}
"""


def tone(seconds, rate, freq, level=0.1):
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_folder_dataset(root, stems=("bass", "drums", "guitar", "piano"), tracks=2, seconds=1.0, rate=22050):
    for split in ("train", "valid"):
        for t in range(tracks):
            folder = root / split / f"Track{t:05d}"
            folder.mkdir(parents=True)
            for n, stem in enumerate(stems):
                sf.write(folder / f"{stem}.wav", tone(seconds, rate, 110 * (n + 1) * (t + 1)), rate, subtype="FLOAT")
    return root


def test_slakh_original_layout_groups_stems_by_class(tmp_path):
    track = tmp_path / "Track00001"
    (track / "stems").mkdir(parents=True)
    (track / "metadata.yaml").write_text(SLAKH_METADATA)
    for i, freq in enumerate((55, 0, 220, 330, 440, 660)):
        data = tone(1.0, 22050, freq) if freq else 0.05 * np.random.default_rng(0).standard_normal(22050).astype(np.float32)
        sf.write(track / "stems" / f"S0{i}.flac", data, 22050)
    assert detect_layout(tmp_path) == "slakh"
    report = scan(tmp_path, ("bass", "drums", "guitar", "piano"))
    (found,) = report.tracks
    assert [p.name for p in found.files["piano"]] == ["S02.flac", "S03.flac"]  # two pianos, summed
    assert found.files["guitar"] == []  # not rendered -> silence; strings dropped
    stems = read_stems(found, ("bass", "drums", "guitar", "piano"), 0, 22050, 22050)
    expected_piano = sum(sf.read(track / "stems" / f"S0{i}.flac", dtype="float32")[0] for i in (2, 3))
    np.testing.assert_allclose(stems[3], expected_piano, atol=1e-6)
    assert not stems[2].any()


def test_folder_of_stems_with_any_names_and_bad_files_reported(tmp_path, caplog):
    make_folder_dataset(tmp_path, stems=("vocals", "drums", "bass", "other"))
    train = tmp_path / "train"
    assert infer_stems(train) == ("bass", "drums", "other", "vocals")
    broken = train / "Track00009"
    broken.mkdir()
    (broken / "vocals.wav").write_text("not audio")
    uneven = train / "Track00008"
    uneven.mkdir()
    sf.write(uneven / "vocals.wav", tone(1.0, 22050, 200), 22050)
    sf.write(uneven / "bass.wav", tone(0.5, 22050, 100), 22050)
    report = scan(train, infer_stems(train))
    assert [t.name for t in report.tracks] == ["Track00000", "Track00001"]
    problems = "\n".join(report.problems)
    assert "vocals.wav" in problems and "Track00008" in problems and "different lengths" in problems


def test_crops_are_aligned_resampled_and_reproducible(tmp_path):
    make_folder_dataset(tmp_path, rate=44100, seconds=1.0)
    report = scan(tmp_path / "train", ("bass", "drums", "guitar", "piano"))
    crops = StemCrops(report.tracks, ("bass", "drums", "guitar", "piano"), 22050, 4096, items_per_epoch=4, seed=3)
    a, b = crops[1], crops[1]
    assert a.shape == (4, 4096) and torch.equal(a, b)
    # A tone of 110*(n+1)*k Hz in every stem: the crop holds it at 22050 Hz.
    spectrum = np.abs(np.fft.rfft(a[0].numpy()))
    freq = spectrum.argmax() * 22050 / 4096
    assert min(abs(freq - 110), abs(freq - 220)) < 10
    crops.set_epoch(1)
    assert not torch.equal(crops[1], a)
    with pytest.raises(DatasetError):
        StemCrops([], ("bass",), 22050, 4096)


def test_edm_loss_weighting_is_the_papers():
    class Zero(torch.nn.Module):
        def forward(self, x, c_noise):
            return torch.zeros_like(x)

    from engine.core.diffusion import KarrasDenoiser

    denoiser = KarrasDenoiser(Zero(), sigma_data=0.2)
    x = torch.full((1, 2, 8), 0.1)
    sigma = torch.tensor([0.5])
    noise = torch.zeros_like(x)
    # D = c_skip x; loss = lambda * (c_skip x - x)^2
    c_skip = 0.04 / (0.25 + 0.04)
    weight = (0.25 + 0.04) / (0.5 * 0.2) ** 2
    assert edm_loss(denoiser, x, sigma, noise).item() == pytest.approx(weight * ((c_skip - 1) * 0.1) ** 2, rel=1e-5)


def run_msdm(*args):
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=300)


def test_train_tiny_then_resume_and_use_the_model(tmp_path):
    data = make_folder_dataset(tmp_path / "data")
    run = tmp_path / "run"
    done = run_msdm("train", "--data", str(data), "-o", str(run), "--preset", "tiny", "--accelerator", "cpu", "-q")
    assert done.returncode == 0, done.stderr[-2000:]
    model = MSDMModel.load(run / "model.safetensors")
    assert model.stems == ("bass", "drums", "guitar", "piano")
    assert "preset tiny" in model.source
    curve = (run / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    assert curve[0].startswith("epoch,step") and len(curve) > 2
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    # Our own checkpoints convert like the paper's, config included.
    exported = tmp_path / "exported.safetensors"
    done = run_msdm("import-checkpoint", str(last), "-o", str(exported))
    assert done.returncode == 0, done.stderr[-2000:]
    for a, b in zip(MSDMModel.load(exported).network.state_dict().values(), model.network.state_dict().values()):
        assert torch.equal(a, b)
    resumed = run_msdm("train", "--data", str(data), "-o", str(run), "--preset", "tiny", "--accelerator", "cpu",
                       "--max-steps", "6", "--resume", str(last), "-q")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert '"steps": 6' in (run / "training.json").read_text()
    # The resumed run logs to its own file: the first curve is kept.
    assert (run / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[:len(curve)] == curve
    assert (run / "logs" / "version_1" / "metrics.csv").is_file()


def test_init_continues_from_a_model_file(tmp_path):
    """--init starts from a model file's prior: a run of 1 step from it stays
    next to it, while a fresh run with the same seed starts elsewhere."""
    data = make_folder_dataset(tmp_path / "data")
    first = tmp_path / "first"
    done = run_msdm("train", "--data", str(data), "-o", str(first), "--preset", "tiny", "--accelerator", "cpu",
                    "--max-steps", "2", "--seed", "1", "-q")
    assert done.returncode == 0, done.stderr[-2000:]
    start = MSDMModel.load(first / "model.safetensors")
    runs = {}
    for name, extra in (("continued", ["--init", str(first / "model.safetensors")]), ("fresh", [])):
        done = run_msdm("train", "--data", str(data), "-o", str(tmp_path / name), "--preset", "tiny",
                        "--accelerator", "cpu", "--max-steps", "1", "-q", *extra)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = MSDMModel.load(tmp_path / name / "model.safetensors")

    def distance(model):
        pairs = zip(model.network.state_dict().values(), start.network.state_dict().values())
        return sum(float((a.float() - b.float()).pow(2).sum()) for a, b in pairs) ** 0.5

    assert runs["continued"].config == start.config
    assert distance(runs["continued"]) < 0.1 * distance(runs["fresh"])
    both = run_msdm("train", "--data", str(data), "-o", str(tmp_path / "bad"), "--preset", "tiny",
                    "--init", str(first / "model.safetensors"), "--resume", str(first / "checkpoints" / "last.ckpt"))
    assert both.returncode != 0 and "not both" in both.stderr


def test_isdm_training_gives_a_single_stem_model(tmp_path):
    data = make_folder_dataset(tmp_path / "data")
    run = tmp_path / "run"
    done = run_msdm("train", "--data", str(data), "-o", str(run), "--preset", "tiny", "--accelerator", "cpu",
                    "--isdm-stem", "drums", "--max-steps", "2", "-q")
    assert done.returncode == 0, done.stderr[-2000:]
    assert MSDMModel.load(run / "model.safetensors").stems == ("drums",)


def test_two_process_ddp_on_cpu_keeps_replicas_identical(tmp_path):
    data = make_folder_dataset(tmp_path / "data", tracks=4)
    run = tmp_path / "run"
    done = run_msdm("train", "--data", str(data), "-o", str(run), "--preset", "tiny", "--accelerator", "cpu",
                    "--devices", "2", "--strategy", "ddp", "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    digests = [(run / f"weights-rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    # The replicas trained: the weights moved away from their initialisation.
    initial = MSDMModel.build(MSDMModel.load(run / "model.safetensors").config, seed=0)
    trained = MSDMModel.load(run / "model.safetensors")
    assert any(not torch.equal(a, b) for a, b in zip(initial.network.state_dict().values(),
                                                     trained.network.state_dict().values()))


def test_figures_are_drawn(tmp_path):
    from training.figures import plot_learning_curve, plot_spectrograms, read_metrics

    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,train_loss,valid_loss\n0,1,1.5,\n0,1,,1.4\n0,3,1.2,\n0,3,,1.1\n")
    assert read_metrics(metrics) == {"train_loss": [(1, 1.5), (3, 1.2)], "valid_loss": [(1, 1.4), (3, 1.1)]}
    png = plot_learning_curve(metrics, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = plot_spectrograms({"bass": tone(0.5, 22050, 55), "drums": tone(0.5, 22050, 3000)}, 22050, tmp_path / "s.png")
    assert png.stat().st_size > 1000


def test_separator_curves_are_drawn_where_each_run_started(tmp_path):
    from PIL import Image

    from training.figures import plot_separator_curve, plot_separator_runs

    header = "step,minutes,lr,train_loss,bass,drums,guitar,piano,All\n"
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text(header + "200,4.0,0.001,12.0,6,8,5,5,6.0\n400,8.0,0.0005,11.0,9,11,8,8,9.0\n")
    second.write_text(header + "200,4.0,0.0004,10.5,10,12,9,9,10.0\n")
    one = plot_separator_curve(first, tmp_path / "one.png", references={"oracle": 16.9})
    both = plot_separator_runs({"from scratch": (first, 0.0), "continued": (second, 8.0)}, tmp_path / "both.png",
                               references={"oracle": 16.9})
    for png in (one, both):
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size == (840, 420)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["both.png", "first.csv", "one.png", "second.csv"]


def _tone_track(track):
    """A 1 s test track of four steady tones and their mix: {stem: samples}."""
    track.mkdir(parents=True)
    stems = {s: tone(1.0, 22050, f) for s, f in (("bass", 55), ("drums", 200), ("guitar", 330), ("piano", 440))}
    for name, data in stems.items():
        sf.write(track / f"{name}.wav", data, 22050, subtype="FLOAT")
    sf.write(track / "mix.wav", sum(stems.values()), 22050, subtype="FLOAT")
    return stems


def test_showcase_writes_audio_and_pictures(tmp_path, tiny_model_path):
    from training.showcase import main as showcase

    stems = _tone_track(tmp_path / "data" / "test" / "Track00003")
    assert showcase(["--model", str(tiny_model_path), "--data", str(tmp_path / "data"), "--docs",
                     str(tmp_path / "docs"), "--examples", str(tmp_path / "ex"), "--seconds", "0.5",
                     "--steps", "3"]) == 0
    assert sf.info(str(tmp_path / "ex" / "example_mix.flac")).frames == 11025
    given = sf.read(tmp_path / "docs" / "audio" / "imputation" / "drums_given.flac", dtype="float32")[0]
    np.testing.assert_allclose(given, stems["drums"][:11025], atol=1e-4)  # 16-bit
    for kind in ("generation", "imputation"):
        assert (tmp_path / "docs" / "audio" / kind / "spectrogram.png").stat().st_size > 1000
        assert (tmp_path / "docs" / "audio" / kind / "mix.flac").is_file()
    # Real, generated and imputed side by side: 4 stems x 3 panels.
    assert (tmp_path / "docs" / "images" / "real-generated-imputed.png").stat().st_size > 5000
    separated = tmp_path / "docs" / "audio" / "separation"
    assert (separated / "spectrogram.png").stat().st_size > 1000
    mix = sum(stems.values())[:11025]
    written = np.stack([sf.read(separated / f"{name}.flac", dtype="float32")[0] for name in stems])
    # Dirac: they sum to the mix (four 16-bit files), except where the random
    # tiny model's stems went past full scale and the files clipped them.
    inside = np.all(np.abs(written) < 0.999, axis=0)
    assert inside.mean() > 0.9
    np.testing.assert_allclose(written.sum(0)[inside], mix[inside], atol=4e-4)


def test_showcase_separation_alone_with_the_first_guess(tmp_path, tiny_packed_path, capsys):
    from training.showcase import main as showcase

    _tone_track(tmp_path / "data" / "test" / "Track00001")
    assert showcase(["--model", str(tiny_packed_path), "--data", str(tmp_path / "data"), "--docs",
                     str(tmp_path / "docs"), "--examples", str(tmp_path / "ex"), "--seconds", "0.5",
                     "--only", "separation"]) == 0
    assert not (tmp_path / "ex").exists() and sorted(p.name for p in (tmp_path / "docs" / "audio").iterdir()) == \
        ["separation"]
    printed = capsys.readouterr().out
    assert re.fullmatch(r"separation SI-SNRi \(dB\): bass [+-]\d+\.\d\d, drums [+-]\d+\.\d\d, guitar [+-]\d+\.\d\d, "
                        r"piano [+-]\d+\.\d\d\n", printed), printed
