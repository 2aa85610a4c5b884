"""The `msdm` command end to end on the tiny model, and its answers to bad input."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from engine.cli import main
from support.special_files import run_msdm, swap_in_a_link_when_sampling_starts, write_streamed_flac

FAST = ["--steps", "4", "--resamples", "1", "--method", "dpmpp2m", "-q"]


@pytest.fixture()
def mix_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mix.wav"
    sf.write(path, (0.1 * rng.standard_normal((6000, 2))).astype(np.float32), 44100, subtype="FLOAT")
    return path


def _help(*command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*command, "--help"])
    return out.getvalue()


def _flags_without_help(text: str) -> list[str]:
    """Flags in a --help text with no description: argparse puts it on the flag's
    line after two spaces, or alone on the next, more indented, line."""
    lines = text.splitlines()
    missing = []
    for n, line in enumerate(lines):
        match = re.match(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$", line)
        if match and not match.group(2):
            following = lines[n + 1] if n + 1 < len(lines) else ""
            if not re.match(r"^ {4,}\S", following) or following.lstrip().startswith("-"):
                missing.append(match.group(1))
    return missing


def test_every_flag_of_every_command_has_help():
    usage = _help()
    commands = re.findall(r"(?m)^    ([a-z][a-z-]*)(?:\s|$)", usage)
    assert {"separate", "generate", "impute", "bounce", "serve", "app", "train", "evaluate"} <= set(commands)
    for command in [[c] for c in commands] + [["dataset", "synth"], ["dataset", "unseen"]]:
        text = _help(*command)
        assert "--" in text, command
        assert not _flags_without_help(text), (command, _flags_without_help(text))
    # The check itself: a flag added without help is caught.
    assert _flags_without_help("options:\n  -h, --help  show this help\n  --bare\n  --next  x\n") == ["--bare"]


def test_separate_writes_one_file_per_stem(tmp_path, tiny_model_path, mix_file):
    out = tmp_path / "out"
    assert main(["separate", str(mix_file), "-o", str(out), "--model", str(tiny_model_path), *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bass.wav", "drums.wav", "guitar.wav", "piano.wav"]
    info = sf.info(str(out / "drums.wav"))
    assert (info.samplerate, info.channels, info.frames) == (44100, 2, 6000)


def test_generate_and_impute(tmp_path, tiny_model_path, mix_file):
    gen = tmp_path / "gen"
    assert main(["generate", "-o", str(gen), "--seconds", "0.1", "--model", str(tiny_model_path),
                 "--format", "flac", *FAST]) == 0
    assert sorted(p.name for p in gen.iterdir()) == ["bass.flac", "drums.flac", "guitar.flac", "mix.flac", "piano.flac"]
    assert sf.info(str(gen / "mix.flac")).frames == 2205
    imp = tmp_path / "imp"
    assert main(["impute", "-o", str(imp), "--given", f"drums={mix_file}", "--model", str(tiny_model_path), *FAST]) == 0
    assert sorted(p.name for p in imp.iterdir()) == ["bass.wav", "guitar.wav", "mix.wav", "piano.wav"]
    assert sf.info(str(imp / "bass.wav")).channels == 2


def test_info_describes_the_model(tiny_model_path, capsys):
    assert main(["info", "--model", str(tiny_model_path)]) == 0
    out = capsys.readouterr().out
    assert "bass, drums, guitar, piano" in out and "129,396" in out and "22050 Hz" in out


def test_console_script_runs(tiny_model_path):
    done = subprocess.run([sys.executable, "-m", "engine.cli", "info", "--model", str(tiny_model_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "parameters" in done.stdout


def bad_files(tmp_path):
    files = {}
    files["empty file"] = tmp_path / "empty.wav"
    files["empty file"].write_bytes(b"")
    files["zero frames"] = tmp_path / "zero.wav"
    sf.write(files["zero frames"], np.zeros((0, 1), dtype=np.float32), 22050)
    files["nan"] = tmp_path / "nan.wav"
    data = np.zeros((1000, 1), dtype=np.float32)
    data[500] = np.nan
    sf.write(files["nan"], data, 22050, subtype="FLOAT")
    files["inf"] = tmp_path / "inf.wav"
    data[500] = np.inf
    sf.write(files["inf"], data, 22050, subtype="FLOAT")
    files["unknown format"] = tmp_path / "notes.wav"
    files["unknown format"].write_text("this is not audio")
    files["missing"] = tmp_path / "missing.wav"
    return files


@pytest.mark.parametrize("case", ["empty file", "zero frames", "nan", "inf", "unknown format", "missing"])
def test_bad_mix_is_a_clear_error_and_writes_nothing(tmp_path, tiny_model_path, case, capsys):
    path = bad_files(tmp_path)[case]
    out = tmp_path / "out"
    code = main(["separate", str(path), "-o", str(out), "--model", str(tiny_model_path), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert path.name in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_bad_given_stems(tmp_path, tiny_model_path, mix_file, capsys):
    other_rate = tmp_path / "other_rate.wav"
    sf.write(other_rate, np.zeros((6000, 2), dtype=np.float32), 48000)
    shorter = tmp_path / "shorter.wav"
    sf.write(shorter, np.zeros((3000, 2), dtype=np.float32), 44100)
    cases = {
        "unknown stem": ([f"vocals={mix_file}"], "vocals"),
        "no equals sign": ([str(mix_file)], "STEM=FILE"),
        "different rates": ([f"drums={mix_file}", f"bass={other_rate}"], "sample rates"),
        "different lengths": ([f"drums={mix_file}", f"bass={shorter}"], "lengths"),
        "all stems": ([f"{s}={mix_file}" for s in ("bass", "drums", "guitar", "piano")], "nothing to generate"),
    }
    for name, (given, expected) in cases.items():
        out = tmp_path / name.replace(" ", "_")
        argv = ["impute", "-o", str(out), "--model", str(tiny_model_path), *FAST]
        for item in given:
            argv += ["--given", item]
        assert main(argv) == 2, name
        assert expected in capsys.readouterr().err, name
        assert not out.exists() or not any(out.iterdir()), name


def test_missing_or_wrong_model_file(tmp_path, mix_file, capsys):
    not_a_model = tmp_path / "model.safetensors"
    not_a_model.write_bytes(b"\x00" * 64)
    for model in (tmp_path / "nope.safetensors", not_a_model):
        assert main(["separate", str(mix_file), "-o", str(tmp_path / "o"), "--model", str(model), "-q"]) == 2
        assert model.name in capsys.readouterr().err


def test_cuda_requested_without_a_gpu(tmp_path, tiny_model_path, mix_file, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["separate", str(mix_file), "-o", str(tmp_path / "o"), "--model", str(tiny_model_path),
                 "--device", "cuda", "-q"]) == 2
    assert "CUDA" in capsys.readouterr().err


def test_import_checkpoint_command(tmp_path, capsys):
    import os

    import torch

    from engine.core.config import TINY
    from engine.core.network import UNet1d

    net = UNet1d(TINY.unet)
    ckpt = tmp_path / "paper.ckpt"
    torch.save({"epoch": 1, "global_step": 10,
                "state_dict": {f"model.unet.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    out = tmp_path / "model.safetensors"
    assert main(["import-checkpoint", str(ckpt), "-o", str(out), "--preset", "tiny"]) == 0
    assert "129,396 parameters" in capsys.readouterr().out
    assert main(["info", "--model", str(out)]) == 0

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": RunsCode()}}, evil)
    assert main(["import-checkpoint", str(evil), "-o", str(tmp_path / "evil.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "refusing" in err and "system" in err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "evil.safetensors").exists()


def test_isdm_separation_from_single_stem_models(tmp_path, mix_file, capsys):
    from engine.core.config import TINY
    from engine.storage.model import MSDMModel

    argv = ["separate", str(mix_file), "-o", str(tmp_path / "out"), *FAST]
    for seed, stem in enumerate(("bass", "drums", "guitar", "piano")):
        path = tmp_path / f"{stem}.safetensors"
        MSDMModel.build(TINY.with_stems((stem,)), seed=seed).save(path)
        argv += ["--model", str(path)]
    assert main(argv) == 0
    written = {p.name: sf.read(p, dtype="float32")[0] for p in (tmp_path / "out").iterdir()}
    assert sorted(written) == ["bass.wav", "drums.wav", "guitar.wav", "piano.wav"]
    mix = sf.read(mix_file, dtype="float32")[0]
    total = sum(written.values())
    scale = max(1.0, max(np.abs(x).max() for x in written.values()))
    assert np.abs(total - mix).max() <= 1e-6 * scale
    # ISDM models cannot generate: a clear error, not a crash.
    models = [a for a in argv[argv.index("--model"):] if a.endswith(".safetensors")]
    gen = ["generate", "-o", str(tmp_path / "gen"), "--seconds", "0.1", "-q"]
    for m in models:
        gen += ["--model", m]
    assert main(gen) == 2
    assert "ISDM" in capsys.readouterr().err


def test_a_missing_default_model_is_said_plainly(tmp_path, mix_file, capsys, monkeypatch):
    missing = tmp_path / "gone" / "default.safetensors"
    monkeypatch.setattr("engine.storage.loading.DEFAULT_MODEL_PATH", missing)
    assert main(["separate", str(mix_file), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_evaluate_command_writes_the_table(tmp_path, tiny_model_path, capsys):
    rng = np.random.default_rng(0)
    for t in range(2):
        folder = tmp_path / "data" / "test" / f"Track{t:05d}"
        folder.mkdir(parents=True)
        for stem in ("bass", "drums", "guitar", "piano"):
            sf.write(folder / f"{stem}.wav", (0.05 * rng.standard_normal(2 * 4096 + 100)).astype(np.float32), 22050,
                     subtype="FLOAT")
    csv_path, md_path = tmp_path / "r.csv", tmp_path / "r.md"
    code = main(["evaluate", "--data", str(tmp_path / "data"), "--model", str(tiny_model_path),
                 "--settings", "dirac:30:1:20:dpmpp2m", "--chunk", "4096", "--csv", str(csv_path), "--markdown", str(md_path), "-q"])
    assert code == 0
    table = md_path.read_text()
    assert "mixture" in table and "oracle" in table and "model" in table
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 4  # header + mixture, oracle, model
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--model", str(tiny_model_path),
                 "--settings", "median:3"]) == 2
    assert "LIKELIHOOD" in capsys.readouterr().err


def test_dataset_synth_command(tmp_path, capsys):
    import shutil

    if shutil.which("fluidsynth") is None:
        pytest.skip("fluidsynth is not installed (apt-get install fluidsynth timgm6mb-soundfont)")
    out = tmp_path / "synth"
    assert main(["dataset", "synth", "--out", str(out), "--tracks", "3", "--seed", "1",
                 "--max-seconds", "3", "-q"]) == 0
    assert "h of audio" in capsys.readouterr().out
    tracks = sorted(out.glob("*/Track*"))
    assert len(tracks) == 3 and all((t / "mix.wav").is_file() for t in tracks)
    assert main(["dataset", "synth", "--out", str(out), "--tracks", "3", "--seed", "1", "--max-seconds", "3",
                 "--soundfont", str(tmp_path / "none.sf2"), "-q"]) == 2
    assert "timgm6mb-soundfont" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback_a_user_error_is_one_line(monkeypatch, tmp_path, tiny_model_path, mix_file, capsys):
    import engine.cli

    def bug(*args, **kwargs):
        raise RuntimeError("an engine bug")

    monkeypatch.setattr(engine.cli, "run_job", bug)
    with pytest.raises(RuntimeError, match="an engine bug"):
        main(["separate", str(mix_file), "-o", str(tmp_path / "o"), "--model", str(tiny_model_path), *FAST])
    assert main(["impute", "-o", str(tmp_path / "i"), "--given", "drums", "--model", str(tiny_model_path), *FAST]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "msdm impute: error: --given 'drums': write it as STEM=FILE, e.g. drums=drums.wav"]


# --------------------------------------------------------------------------- #
# Where outputs may go, and inputs that cannot be read (issue 14): a real
# `msdm` process, real files, a real FIFO; each case exits 2 with one line.
# --------------------------------------------------------------------------- #

def _one_line_error(done, *words: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


def _tree(folder) -> list[str]:
    """Everything under `folder`, hidden temp files included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_an_output_that_is_the_input_is_refused_and_the_input_kept(tmp_path, tiny_model_path):
    """Finding 8: `msdm separate song/bass.wav -o song` replaced the input with the bass stem."""
    song = tmp_path / "song"
    song.mkdir()
    mix = song / "bass.wav"
    sf.write(mix, np.full((3000, 1), 0.1, np.float32), 22050)
    before = mix.read_bytes()
    done = run_msdm("separate", mix, "-o", song, "--model", tiny_model_path, *FAST)
    _one_line_error(done, "bass.wav", "input")
    assert mix.read_bytes() == before and _tree(song) == ["bass.wav"]  # and no other stem appeared


@pytest.mark.parametrize("link", ["hard link", "symbolic link"])
def test_an_output_that_is_the_input_by_another_name_is_refused(tmp_path, tiny_model_path, mix_file, link, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (os.link if link == "hard link" else os.symlink)(mix_file, out / "drums.wav")
    before = mix_file.read_bytes()
    assert main(["separate", str(mix_file), "-o", str(out), "--model", str(tiny_model_path), *FAST]) == 2
    assert "is the input" in capsys.readouterr().err
    assert mix_file.read_bytes() == before and _tree(out) == ["drums.wav"]


def test_a_folder_where_a_stem_goes_stops_the_job_before_anything_is_written(tmp_path, tiny_model_path, mix_file):
    """Finding 9: bass.wav was replaced, then an IsADirectoryError traceback, no other stems."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "bass.wav").write_bytes(b"the user's own bass")
    (out / "drums.wav").mkdir()
    done = run_msdm("separate", mix_file, "-o", out, "--model", tiny_model_path, *FAST)
    _one_line_error(done, "drums.wav", "folder")
    assert (out / "bass.wav").read_bytes() == b"the user's own bass"
    assert _tree(out) == ["bass.wav", "drums.wav"]


def test_a_folder_in_the_way_of_a_generated_file_leaves_the_others_untouched(tmp_path, tiny_model_path, capsys):
    """The same for generate, whose files used to be opened only after sampling."""
    out = tmp_path / "gen"
    out.mkdir()
    (out / "piano.wav").write_bytes(b"keep")
    (out / "mix.wav").mkdir()
    assert main(["generate", "-o", str(out), "--seconds", "0.1", "--model", str(tiny_model_path), *FAST]) == 2
    assert "mix.wav" in capsys.readouterr().err
    assert (out / "piano.wav").read_bytes() == b"keep" and _tree(out) == ["mix.wav", "piano.wav"]


@pytest.mark.parametrize("where", ["under /proc", "/proc itself", "under a file"])
def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, tiny_model_path, mix_file, where):
    """Finding 10: -o under /proc (or a read-only place) was a traceback and exit 1."""
    out = {"under /proc": "/proc/msdm-no-such-folder/out", "/proc itself": "/proc",
           "under a file": mix_file / "stems"}[where]
    done = run_msdm("separate", mix_file, "-o", out, "--model", tiny_model_path, *FAST)
    _one_line_error(done, str(out) if where != "under a file" else "stems")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_a_read_only_output_folder_is_one_line(tmp_path, tiny_model_path, mix_file, capsys):
    out = tmp_path / "read-only"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert main(["separate", str(mix_file), "-o", str(out), "--model", str(tiny_model_path), *FAST]) == 2
    finally:
        out.chmod(0o755)
    assert "read-only" in capsys.readouterr().err and _tree(out) == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize("task", ["separate", "impute"])
def test_a_fifo_as_input_is_refused_at_once(tmp_path, tiny_model_path, task):
    """Finding 10: a FIFO as input hung the CLI (opening it waits for a writer)."""
    fifo = tmp_path / "mix.wav"
    os.mkfifo(fifo)
    inputs = [fifo] if task == "separate" else ["--given", f"drums={fifo}"]
    done = run_msdm(task, *inputs, "-o", tmp_path / "out", "--model", tiny_model_path, *FAST, timeout=60)
    _one_line_error(done, "mix.wav", "named pipe")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", ["separate", "impute"])
def test_a_streamed_flac_without_a_length_is_refused(tmp_path, tiny_model_path, task):
    """Finding 10: a FLAC streamed with no length was read as 2**63 frames, then failed
    (separate after decoding it, impute with a traceback), leaving the -o folder."""
    flac = write_streamed_flac(tmp_path / "streamed.flac")
    inputs = [flac] if task == "separate" else ["--given", f"drums={flac}"]
    done = run_msdm(task, *inputs, "-o", tmp_path / "new" / "out", "--model", tiny_model_path, *FAST)
    _one_line_error(done, "streamed.flac", "does not say how long")
    assert not (tmp_path / "new").exists()


def test_a_failed_run_removes_the_folders_it_made_and_only_those(tmp_path, tiny_model_path, capsys):
    """Finding 10: a failed run left the empty -o folder it created. This mix
    fails mid-job (a NaN after the header was read and the writers opened)."""
    mix = bad_files(tmp_path)["nan"]
    made = tmp_path / "new" / "deeper"
    assert main(["separate", str(mix), "-o", str(made), "--model", str(tiny_model_path), *FAST]) == 2
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "was-there"
    kept.mkdir()
    assert main(["separate", str(mix), "-o", str(kept / "sub"), "--model", str(tiny_model_path), *FAST]) == 2
    assert kept.is_dir() and _tree(kept) == []
    assert capsys.readouterr().err.count("invalid sample") == 2


def test_a_link_swapped_in_for_the_output_folder_during_the_job_redirects_nothing(
        tmp_path, tiny_model_path, monkeypatch, capsys):
    """Finding 3: the folder was checked when the job started, not when it wrote:
    a symlink put in its place during the job sent every file through it."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    swap_in_a_link_when_sampling_starts(monkeypatch, out, elsewhere, tmp_path / "out.moved")
    assert main(["generate", "-o", str(out), "--seconds", "0.1", "--model", str(tiny_model_path), *FAST]) == 2
    assert "moved or replaced" in capsys.readouterr().err
    assert _tree(elsewhere) == [] and _tree(tmp_path / "out.moved") == []
