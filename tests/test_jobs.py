"""engine.jobs: the one option table, what the front ends derive from it, and
the one function that runs a job."""

from __future__ import annotations

import dataclasses

import pytest

from engine.errors import CommandError
from engine.jobs import options as table
from engine.jobs.options import OPTIONS, JobOptions
from engine.jobs.run import Job, parse_given, run_job
from osc_bridge import protocol
from osc_bridge.protocol import ProtocolError, parse_options


def test_job_options_are_the_tables_with_its_defaults():
    fields = {f.name: f.default for f in dataclasses.fields(JobOptions)}
    assert fields.pop("overwrite") is False
    assert fields == {o.name: o.default for o in OPTIONS}


def test_the_tables_choices_are_the_engines():
    from engine.core.diffusion import METHODS
    from engine.core.tasks import LIKELIHOODS, STARTS

    assert table.METHODS == tuple(METHODS) and table.LIKELIHOODS == tuple(LIKELIHOODS)
    assert table.STARTS == tuple(STARTS)


def _cases():
    """(option, a value at each limit, a value beyond it) for every bounded option."""
    for o in OPTIONS:
        if o.low is not None:
            step = 1 if o.type is int else 0.5
            yield o, [o.type(o.low), o.type(o.high)], [o.type(o.low - step), o.type(o.high + step)]
        elif o.choices:
            yield o, list(o.choices), ["nope"]


@pytest.mark.parametrize("option,good,bad", list(_cases()), ids=lambda v: getattr(v, "name", ""))
def test_cli_flags_and_osc_options_take_the_same_values(option, good, bad, capsys):
    from engine.cli import get_parser

    task = option.tasks[0]
    base = {"separate": ["separate", "mix.wav"], "generate": ["generate", "--seconds", "1"],
            "impute": ["impute", "--given", "drums=d.wav"]}[task] + ["-o", "out"]
    parser = get_parser()
    for value in good:
        args = parser.parse_args(base + [option.flag, str(value)])
        assert getattr(args, option.name) == value
        assert getattr(parse_options([option.name, value], task, "j"), option.name) == value
    for value in bad:
        with pytest.raises(SystemExit):
            parser.parse_args(base + [option.flag, str(value)])
        assert option.flag in capsys.readouterr().err
        with pytest.raises(ProtocolError, match=option.name):
            parse_options([option.name, value], task, "j")


def test_every_table_option_is_an_osc_option_and_a_flag_of_its_tasks():
    assert [o.name for o in protocol.OPTIONS][:len(OPTIONS)] == [o.name for o in OPTIONS]
    for task in table.TASKS:
        text = _help(task)
        for option in OPTIONS:
            assert (option.flag in text) == (task in option.tasks), (task, option.name)


def _help(command: str) -> str:
    import contextlib
    import io

    from engine.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([command, "--help"])
    return out.getvalue()


def test_sampler_settings_are_the_tasks_defaults_with_the_options_given():
    from engine.core import tasks

    options = JobOptions(steps=8, resamples=1, method="dpmpp2m", likelihood="gaussian")
    assert options.sampler_settings("separate") == tasks.default_separation_settings("gaussian").override(
        steps=8, num_resamples=1, method="dpmpp2m")
    assert options.sampler_settings("impute") == tasks.IMPUTE.override(steps=8, num_resamples=1, method="dpmpp2m")
    assert JobOptions().sampler_settings("generate") == tasks.GENERATE
    with pytest.raises(CommandError, match="sigma_min"):
        JobOptions(sigma_min=5.0).sampler_settings("separate")  # separation's sigma_max is 1


def test_guidance_reaches_latent_imputation_only():
    from engine.core import tasks

    assert JobOptions(guidance=2.5).sampler_settings("impute", latent_prior=True).guidance == 2.5
    assert JobOptions().sampler_settings("impute", latent_prior=True) == tasks.LATENT_IMPUTE
    with pytest.raises(CommandError, match="guidance is for the latent prior"):
        JobOptions(guidance=2.0, prior="waveform").check()
    with pytest.raises(CommandError, match="guidance is for the latent prior"):
        JobOptions(guidance=2.0).sampler_settings("impute", latent_prior=False)  # a model without one
    # The neutral values ask nothing of the waveform prior; others are refused, by the
    # job options and the sampler settings alike (engine.core.latent_options).
    assert JobOptions(guidance=1.0, harmony=0.0, prior="waveform").problem() is None
    with pytest.raises(CommandError, match="harmony guidance is for the latent prior"):
        JobOptions(harmony=0.5, prior="waveform").check()
    with pytest.raises(CommandError, match="harmony guidance is for the latent prior"):
        JobOptions(harmony=0.5).sampler_settings("impute", latent_prior=False)
    assert protocol.network_evaluations("impute", JobOptions(steps=24, guidance=2.0))[2] == 48
    assert protocol.network_evaluations("impute", JobOptions(steps=24, guidance=1.0))[2] == 24


def test_problems_are_user_errors():
    assert JobOptions(format="flac").sample_format == "24"
    with pytest.raises(CommandError, match="FLAC"):
        JobOptions(format="flac", bits="32f").check()
    with pytest.raises(CommandError, match="overlap"):
        JobOptions(overlap=0.95).check()
    with pytest.raises(CommandError, match="twice"):
        parse_given(["drums=a.wav", "drums=b.wav"])
    with pytest.raises(CommandError, match="STEM=FILE"):
        parse_given(["drums"])
    with pytest.raises(CommandError, match="unknown task"):
        Job("remix", "out")


def test_run_job_writes_what_the_pipeline_writes(tmp_path, tiny_models):
    from engine.audio import pipeline
    from engine.audio.files import read_audio

    options = JobOptions(steps=3, resamples=1, seed=5)
    paths = run_job(tiny_models, Job("generate", tmp_path / "job", options, seconds=0.05))
    direct = pipeline.generate_file(tiny_models, tmp_path / "direct", 0.05, seed=5,
                                    settings=options.sampler_settings("generate"),
                                    output=pipeline.OutputFormat())
    assert sorted(paths) == sorted(direct) == ["bass", "drums", "guitar", "mix", "piano"]
    for name in paths:
        assert (read_audio(paths[name]).samples == read_audio(direct[name]).samples).all()


def test_building_the_command_line_needs_no_torch():
    """Every `msdm` call builds the parser (osc-send runs once per DAW message)."""
    import subprocess
    import sys

    code = "import sys, engine.cli; engine.cli.get_parser(); sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
