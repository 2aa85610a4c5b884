"""The desktop app's pure modules (no Qt, no device): mixer, session, lane
states, export, spectrogram, waveform envelope, jobs and OSC messages, checked
with exact numbers."""

from __future__ import annotations

import dataclasses

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from desktop import osc_messages as osc
from desktop.export import ExportError, export_lanes, file_name
from desktop.jobs import Job, check_result, format_left
from desktop.lane_state import LaneState, PlaybackCache, given_stems, lane_states, mixer_tracks, playback_rate
from desktop.mixer import Mixer, Track, audible, prepare_samples
from desktop.session import MIX, LaneAudio, Session, StemMismatchError, assign_stem_files
from desktop.spectrogram import spectrogram_db
from desktop.waveform import waveform_points

STEMS = ("bass", "drums", "guitar", "piano")


def constant(value: float, frames: int, channels: int = 1) -> np.ndarray:
    return np.full((frames, channels), value, dtype=np.float32)


# ---- mixer -----------------------------------------------------------------
def make_mixer(frames: int = 1000) -> Mixer:
    mixer = Mixer(1000, out_channels=2)
    mixer.set_tracks({"bass": Track(constant(0.125, frames)), "drums": Track(constant(0.25, frames)),
                      "stereo": Track(np.tile(np.array([[0.0625, -0.0625]], np.float32), (frames, 1)))})
    return mixer


def test_mixer_sums_audible_tracks_with_gains_mute_and_solo():
    mixer = make_mixer()
    mixer.play()
    block = mixer.render(10)
    np.testing.assert_array_equal(block[:, 0], np.full(10, 0.125 + 0.25 + 0.0625, np.float32))
    np.testing.assert_array_equal(block[:, 1], np.full(10, 0.125 + 0.25 - 0.0625, np.float32))
    mixer.update("drums", gain=0.5)
    mixer.update("stereo", mute=True)
    np.testing.assert_array_equal(mixer.render(4), np.full((4, 2), 0.125 + 0.125, np.float32))
    mixer.update("bass", solo=True)
    np.testing.assert_array_equal(mixer.render(4), np.full((4, 2), 0.125, np.float32))
    mixer.update("stereo", solo=True)  # muted beats soloed
    np.testing.assert_array_equal(mixer.render(4), np.full((4, 2), 0.125, np.float32))
    assert mixer.position == 22
    assert audible(mixer.tracks()) == ["bass"]


def test_mixer_downmixes_other_channel_counts_and_clips():
    mixer = Mixer(100, out_channels=2)
    three = np.tile(np.array([[0.3, 0.6, 0.9]], np.float32), (5, 1))
    mixer.set_tracks({"a": Track(three), "loud": Track(constant(0.8, 5), gain=1.5)})
    mixer.play()
    out = mixer.render(5)
    assert out.shape == (5, 2)
    np.testing.assert_array_equal(out, np.ones((5, 2), np.float32))  # 0.6 + 1.2 clipped to 1
    assert not mixer.playing  # 5 frames played: the end
    mixer.update("loud", mute=True)
    mixer.seek(0)
    mixer.play()
    np.testing.assert_allclose(mixer.render(5), np.full((5, 2), 0.6), rtol=1e-6)


def test_mixer_stops_at_the_end_and_pads_with_silence():
    mixer = Mixer(10, out_channels=1)
    mixer.set_tracks({"a": Track(constant(0.5, 7)), "b": Track(constant(0.25, 3))})
    mixer.play()
    out = mixer.render(10)[:, 0]
    np.testing.assert_array_equal(out, [0.75] * 3 + [0.5] * 4 + [0.0] * 3)
    assert not mixer.playing and mixer.position == 7
    np.testing.assert_array_equal(mixer.render(4), np.zeros((4, 1)))  # stopped: silence, no advance
    mixer.play()  # at the end: play starts over
    assert mixer.playing and mixer.position == 0


def test_mixer_loops_a_region_and_seeks():
    ramp = np.arange(20, dtype=np.float32).reshape(-1, 1) / 100
    mixer = Mixer(10, out_channels=1)
    mixer.set_tracks({"ramp": Track(ramp)})
    mixer.seek(3)
    mixer.set_loop(5, 8)
    mixer.play()
    out = mixer.render(11)[:, 0] * 100
    np.testing.assert_allclose(out, [3, 4, 5, 6, 7, 5, 6, 7, 5, 6, 7], atol=1e-5)
    mixer.set_loop(None)
    mixer.seek(18)
    np.testing.assert_allclose(mixer.render(3)[:, 0] * 100, [18, 19, 0], atol=1e-5)
    mixer.seek(-5)
    assert mixer.position == 0
    mixer.seek(10 ** 9)
    assert mixer.position == 20
    mixer.set_loop(4, 6)
    mixer.stop()
    assert mixer.position == 4  # stop goes back to the loop start while looping


def test_prepare_samples_is_frames_first():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(prepare_samples(x), x.T)
    with pytest.raises(ValueError):
        prepare_samples(np.zeros(3))


# ---- session ---------------------------------------------------------------
def lane(value: float, frames: int = 8, rate: int = 100, name: str = "x.wav") -> LaneAudio:
    return LaneAudio(np.full((1, frames), value, np.float32), rate, Path(name))


def test_session_results_and_undo():
    session = Session(STEMS)
    assert session.lane_names == (MIX, *STEMS) and session.filled() == []
    mix = lane(0.5)
    session.apply_result({MIX: mix}, "open")
    first = {s: lane(i) for i, s in enumerate(STEMS)}
    session.apply_result(first, "separate")
    assert session.undo_audio() == [mix]  # what undo would put back stays ready to play
    assert session.filled() == [MIX, *STEMS]
    session.apply_result({"bass": lane(9.0), MIX: lane(1.0)}, "impute")
    assert session.undo() == "impute"
    assert session.audio["bass"] is first["bass"] and session.audio[MIX] is mix
    assert session.undo() == "separate" and session.undo() == "open"  # every step, newest first
    assert not session.can_undo and session.undo() == "" and session.filled() == []
    session.apply_result({MIX: mix}, "open")
    session.apply_result(first, "separate")
    with pytest.raises(StemMismatchError, match="vocals"):
        session.apply_result({"vocals": lane(1.0)}, "x")
    session.set_stems(("bass", "vocals"))
    assert session.lane_names == (MIX, "bass", "vocals")
    assert session.audio["bass"] is first["bass"] and session.audio["vocals"] is None


def test_assign_stem_files_by_name_then_in_order():
    placed = assign_stem_files(["/a/Song - Drums.wav", "/a/one.flac", "/a/bass_take2.wav"], STEMS)
    assert placed == {"drums": Path("/a/Song - Drums.wav"), "bass": Path("/a/bass_take2.wav"),
                      "guitar": Path("/a/one.flac")}
    with pytest.raises(StemMismatchError, match="4 stems .* 5 files"):
        assign_stem_files([f"/a/{i}.wav" for i in range(5)], STEMS)
    with pytest.raises(StemMismatchError, match="Two files are named for the drums"):
        assign_stem_files(["/a/drums.wav", "/b/drums.wav"], STEMS)
    with pytest.raises(StemMismatchError, match="No free lane"):
        assign_stem_files(["/a/x.wav", "/a/y.wav"], STEMS, free=["piano"])


# ---- lane states -------------------------------------------------------------
def test_lane_states_keep_their_settings_when_the_stems_change():
    states = lane_states((MIX, *STEMS))
    assert [s.name for s in states] == [MIX, *STEMS] and states[0].is_mix and not states[1].is_mix
    bass, drums = states[1], states[2]
    bass.mute, bass.gain, drums.given, drums.audio = True, 0.5, True, lane(0.1)
    states[3].given = True  # ticked but empty: Impute cannot keep it
    states[0].given, states[0].audio = True, lane(0.2)  # the mix is never a given stem
    assert given_stems(states) == ["drums"]
    changed = lane_states((MIX, "bass", "vocals"), states)
    assert changed[1] is bass and (bass.mute, bass.gain) == (True, 0.5)
    assert changed[2] == LaneState("vocals")  # a new lane starts plain: level 1, not muted, not given


def test_playback_rate_is_the_mix_rate_else_the_first_filled_lane():
    assert playback_rate({MIX: None, "bass": None}) is None
    assert playback_rate({MIX: None, "bass": lane(0.1, rate=300), "drums": lane(0.1, rate=200)}) == 300
    assert playback_rate({MIX: lane(0.1, rate=100), "bass": lane(0.1, rate=300)}) == 100


def test_mixer_tracks_resample_to_the_playback_rate_once():
    from engine.audio.files import resample

    t = np.arange(400) / 400
    bass_audio = LaneAudio(np.stack([np.sin(2 * np.pi * 5 * t), np.cos(2 * np.pi * 3 * t)]).astype(np.float32),
                           400, Path("bass.wav"))
    states = [LaneState(MIX, lane(0.5, frames=200, rate=200)), LaneState("bass", bass_audio, gain=0.25, solo=True),
              LaneState("drums")]
    cache = PlaybackCache()
    tracks = mixer_tracks(states, 200, cache)
    assert list(tracks) == [MIX, "bass"]  # empty lanes have no track
    np.testing.assert_array_equal(tracks[MIX].samples, np.full((200, 1), 0.5, np.float32))
    np.testing.assert_array_equal(tracks["bass"].samples, resample(bass_audio.samples, 400, 200).T)
    assert tracks["bass"].samples.shape == (200, 2) and tracks["bass"].samples.flags.c_contiguous
    assert (tracks["bass"].gain, tracks["bass"].mute, tracks["bass"].solo) == (0.25, False, True)
    states[1].mute = True
    again = mixer_tracks(states, 200, cache)
    assert again["bass"].samples is tracks["bass"].samples and again["bass"].mute  # cached, settings fresh
    assert len(cache) == 2
    copy = LaneAudio(bass_audio.samples, 400, Path("bass.wav"))  # equal audio, another object: not a hit
    assert cache.get(copy, 200) is None and cache.get(bass_audio, 100) is None
    cache.keep_only([bass_audio, None])
    assert len(cache) == 1 and cache.get(states[0].audio, 200) is None


# ---- export ----------------------------------------------------------------
@pytest.mark.parametrize("fmt,bits,subtype,tolerance", [("wav", "16", "PCM_16", 2 ** -15),
                                                        ("flac", "24", "PCM_24", 2 ** -23),
                                                        ("wav", "32f", "FLOAT", 0.0)])
def test_export_writes_every_lane_and_reads_back(tmp_path, fmt, bits, subtype, tolerance):
    rng = np.random.default_rng(0)
    lanes = {s: LaneAudio((rng.uniform(-0.9, 0.9, (2, 500))).astype(np.float32), 44100, Path(f"{s}.wav"))
             for s in STEMS}
    written = export_lanes(lanes, tmp_path / "out", song="My: Song", fmt=fmt, bits=bits,
                           pattern="{index:02d} {song} - {stem}")
    assert [p.name for p in written] == [f"{i + 1:02d} My_ Song - {s}.{fmt}" for i, s in enumerate(STEMS)]
    for path, audio in zip(written, lanes.values()):
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        assert rate == 44100 and sf.info(path).subtype == subtype
        np.testing.assert_allclose(data.T, audio.samples, atol=tolerance)


def test_export_refuses_settings_that_cannot_work(tmp_path):
    lanes = {"bass": lane(0.1)}
    with pytest.raises(ExportError, match="FLAC cannot store 32-bit float"):
        export_lanes(lanes, tmp_path, song="s", fmt="flac", bits="32f")
    with pytest.raises(ExportError, match="no {stem}"):
        export_lanes(lanes, tmp_path, song="s", pattern="{song}")
    with pytest.raises(ExportError, match="not valid"):
        export_lanes(lanes, tmp_path, song="s", pattern="{stem} {nope}")
    with pytest.raises(ExportError, match="Nothing to export"):
        export_lanes({}, tmp_path, song="s")
    export_lanes(lanes, tmp_path, song="s")
    with pytest.raises(ExportError, match="already exists"):
        export_lanes(lanes, tmp_path, song="s", overwrite=False)
    assert file_name("{song}/{stem}", "a", "b", 1, "wav") == "a_b.wav"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s - bass.wav"]  # no temp files left


# ---- spectrogram and waveform ----------------------------------------------
def test_spectrogram_peaks_at_the_sine_frequency_at_0_db():
    rate, freq = 16000, 1000.0
    t = np.arange(rate) / rate
    image, seconds_per_column, hz_per_bin = spectrogram_db(np.sin(2 * np.pi * freq * t), rate, n_fft=512)
    assert hz_per_bin == rate / 512 and seconds_per_column == 128 / rate
    assert image.shape == (1 + (rate - 512) // 128, 257)
    column = image[image.shape[0] // 2]
    assert column.argmax() == round(freq / hz_per_bin)
    assert abs(column.max()) < 0.1  # full-scale sine = 0 dB
    long_image, hop_seconds, _ = spectrogram_db(np.zeros(600 * 100), 100, n_fft=64, max_columns=50)
    assert long_image.shape[0] <= 50 and long_image.min() == -90.0


def test_waveform_envelope_keeps_every_peak_in_time_order():
    rng = np.random.default_rng(1)
    y = rng.standard_normal(100_003).astype(np.float32)
    x, points = waveform_points(y, 1000, max_points=1000)
    assert points.size <= 1000 + 200 and np.all(np.diff(x) > 0)
    assert points.max() == y.max() and points.min() == y.min()
    block = int(np.ceil(2 * y.size / 1000))  # 201 samples per (min, max) pair
    first = y[:block]
    assert set(points[:2]) == {first.min(), first.max()}
    small_x, small = waveform_points(y[:500], 1000)
    np.testing.assert_array_equal(small, y[:500])
    np.testing.assert_allclose(small_x, np.arange(500) / 1000)


# ---- jobs and OSC messages ---------------------------------------------------
def test_job_time_left_extrapolates_from_the_first_report(tmp_path):
    job = Job("separate", "j", tmp_path, ("bass",), started=0.0)
    assert job.seconds_left(now=5.0) is None
    job.update(0.1, "step 1", now=10.0)
    job.update(0.4, "step 4", now=16.0)  # 0.3 per 6 s -> 0.6 left = 12 s
    assert job.seconds_left(now=16.0) == pytest.approx(12.0)
    assert format_left(12.0) == "12 s left" and format_left(125) == "2 min 05 s left"
    assert format_left(None) == "estimating…"
    (tmp_path / "bass.wav").write_bytes(b"x")
    assert check_result(job, {"bass": str(tmp_path / "bass.wav")}) == []
    problems = check_result(job, {"drums": str(tmp_path / "nope.wav")})
    assert "needs 1" in problems[0] and "does not exist" in problems[1]


def test_osc_messages_round_trip_through_python_osc():
    data = osc.separate("j1", "/m/mix.wav", "/o/out", steps=4, seed=7, churn=0.5, likelihood="dirac", mono=None)
    reply = osc.parse(data)
    assert reply == osc.Reply("separate", ("j1", "/m/mix.wav", "/o/out", "steps", 4, "seed", 7,
                                           "churn", 0.5, "likelihood", "dirac"))
    impute = osc.parse(osc.impute("j2", "/o", {"drums": "/d.wav", "bass": "/b.wav"}, steps=4))
    assert impute.args == ("j2", "/o", "drums", "/d.wav", "bass", "/b.wav", "steps", 4)
    assert osc.parse(osc.generate("j3", "/o", 3, seed=1)).args == ("j3", "/o", 3.0, "seed", 1)
    assert osc.pairs(["bass", "/b", "mix", "/m", "odd"]) == {"bass": "/b", "mix": "/m"}
    assert osc.parse(b"garbage") is None
    assert osc.parse(osc.build("/other/thing", [1])) is None


def test_pure_modules_load_without_qt():
    """The modules the window builds on that hold logic (jobs, lanes, mixing,
    export) are plain python: they import, and so run and test, with no Qt."""
    import subprocess
    import sys

    pure = ("jobs", "lane_state", "session", "mixer", "export", "osc_messages", "spectrogram", "waveform")
    code = (f"import sys\nfor name in {pure!r}: __import__('desktop.' + name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'shiboken6')))")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ---- the Linux installer ---------------------------------------------------------
def test_linux_installer_puts_an_entry_that_runs_this_msdm_in_the_menu(tmp_path):
    import configparser
    import shutil
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    root = Path(__file__).resolve().parent.parent
    script = root / "installers" / "linux" / "install.sh"
    done = subprocess.run(["bash", str(script), "--prefix", str(tmp_path), "--no-pip", "--python", sys.executable],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(tmp_path / "applications" / "msdm-studio.desktop")
    section = entry["Desktop Entry"]
    assert section["Name"] == "MSDM Studio" and section["Icon"] == "msdm-studio" and "Audio" in section["Categories"]
    program = section["Exec"].split('"')[1]
    assert Path(program).is_file() and os.access(program, os.X_OK)
    assert section["Exec"].endswith(" app %F")
    assert program in {os.path.join(os.path.dirname(sys.executable), "msdm"), shutil.which("msdm")}
    icon = ET.parse(tmp_path / "icons" / "hicolor" / "scalable" / "apps" / "msdm-studio.svg").getroot()
    assert icon.tag.endswith("svg") and icon.get("viewBox") == "0 0 256 256"
    done = subprocess.run(["bash", str(script), "--prefix", str(tmp_path), "--uninstall"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not (tmp_path / "applications" / "msdm-studio.desktop").exists()


def test_requests_are_built_from_the_task_bar_without_qt():
    """The window's job building is a pure function: which lanes a result fills,
    what goes to the engine, and what the user is told when a task cannot start.
    The request parses with the server's own parser."""
    from desktop.jobs import JobRefused, TaskControls, build_request
    from osc_bridge.codec import decode_datagram
    from osc_bridge.protocol import parse_request

    controls = TaskControls(steps=32, resamples=1, seed=7, method="dpmpp2m", likelihood="gaussian", seconds=3.0,
                            separation="from noise")
    expected, datagram = build_request("separate", "j1", Path("/out/j1"), controls, STEMS, mix="/m.wav")
    assert expected == STEMS
    (address, args), = decode_datagram(datagram)
    request = parse_request(address, args, STEMS)
    assert (request.kind, request.mix_path, request.out_dir) == ("separate", "/m.wav", "/out/j1")
    assert (request.options.steps, request.options.resamples, request.options.seed, request.options.method,
            request.options.likelihood, request.options.sample_format) == (32, 1, 7, "dpmpp2m", "gaussian", "32f")
    assert request.options.start == "noise"
    # "Separate by": the first guess alone (0 steps), or refined in the Steps box's steps.
    for separation, start, steps in (("first guess", "guess", 0), ("refined guess", "guess", 32)):
        chosen = dataclasses.replace(controls, separation=separation)
        _, datagram = build_request("separate", "j1", Path("/out/j1"), chosen, STEMS, mix="/m.wav")
        options = parse_request(*decode_datagram(datagram)[0], STEMS).options
        assert (options.start, options.steps) == (start, steps)

    expected, datagram = build_request("generate", "j2", Path("/out/j2"), controls, STEMS, extra={"steps": 4})
    assert expected == (*STEMS, MIX)
    request = parse_request(*decode_datagram(datagram)[0], STEMS)
    assert (request.seconds, request.options.steps, request.options.resamples) == (3.0, 4, None)
    # One take: its first window comes first as a preview (/msdm/preview); several takes arrive one by one instead.
    assert request.options.preview and request.options.takes == 1
    _, datagram = build_request("generate", "j2", Path("/out/j2"), dataclasses.replace(controls, takes=3), STEMS)
    request = parse_request(*decode_datagram(datagram)[0], STEMS)
    assert (request.options.preview, request.options.takes) == (False, 3)

    expected, datagram = build_request("impute", "j3", Path("/out/j3"), controls, STEMS, given={"drums": "/d.wav"})
    assert expected == ("bass", "guitar", "piano", MIX)
    request = parse_request(*decode_datagram(datagram)[0], STEMS)
    assert request.given == {"drums": "/d.wav"} and request.options.preview

    with pytest.raises(JobRefused, match="needs a mix"):
        build_request("separate", "j", Path("/o"), controls, STEMS)
    with pytest.raises(JobRefused, match="at least one given"):
        build_request("impute", "j", Path("/o"), controls, STEMS)
    with pytest.raises(JobRefused, match="nothing to generate"):
        build_request("impute", "j", Path("/o"), controls, STEMS, given={s: f"/{s}.wav" for s in STEMS})
