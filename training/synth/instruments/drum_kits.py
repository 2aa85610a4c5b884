"""Synthesised drum kits for the General MIDI percussion keys that
training/synth/drums.py writes (kick 35/36, side stick 37, snare 38/40, clap
39, toms 41-50, hi-hats 42/44/46, crash 49/57, ride 51/59, ...).

Kit families:
* analog: TR-808/909-style circuits: a sine with a falling pitch for kick and
  toms, tone plus filtered noise for the snare, six detuned square waves
  through a high-pass for the hats and cymbals (the 808's metal section).
* modal: acoustic-like: membrane modes at the ideal circular membrane's
  Bessel-zero ratios (1, 1.59, 2.14, 2.30, 2.65, 2.92, 3.16) for kick, snare
  and toms, snare wires as band-passed noise, cymbals as dense banks of
  inharmonic decaying modes plus noise (dsp.modal_bank).
* fm (held out, never used for training): every piece by two-operator
  FM with inharmonic ratios (DX/TX-style percussion).

Per hit: each key is rendered as a few variants (small random pitch and
decay changes); a hit picks one, and its velocity sets its level
(velocity ** curve) and brightness (a blend of the variant and a low-passed
copy). Hi-hats choke each other: a hat hit stops the one still ringing.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import asdict, dataclass, field

import numpy as np

from ..corpus import MidiNote
from . import dsp
from .notes import end_fade, oscillator_phase

TRAIN_KITS = ("analog", "modal")
HOLDOUT_KITS = ("fm",)  # never used for training: the project's own held-out drum timbres
VARIANTS = 4
MEMBRANE = np.array([1.0, 1.59, 2.14, 2.30, 2.65, 2.92, 3.16, 3.50])
METAL_808 = np.array([205.3, 304.4, 369.6, 522.7, 540.0, 800.0])
HATS = ("closed_hat", "pedal_hat", "open_hat")
TOM_KEYS = (41, 43, 45, 47, 48, 50)


def piece_of(key: int) -> str:
    """The kit piece that plays a GM percussion key (anything unlisted: a generic short percussion)."""
    table = {35: "kick", 36: "kick", 37: "side_stick", 38: "snare", 40: "snare", 39: "clap",
             42: "closed_hat", 44: "pedal_hat", 46: "open_hat", 49: "crash", 57: "crash", 52: "crash",
             55: "crash", 51: "ride", 59: "ride", 53: "ride_bell", 54: "tambourine", 56: "cowbell"}
    if key in table:
        return table[key]
    return "tom" if 41 <= key <= 50 else "perc"


@dataclass(frozen=True)
class Kit:
    family: str
    params: dict = field(default_factory=dict)  # per kit piece, plus kit-wide keys

    def to_json(self) -> dict:
        return asdict(self)


def draw_kit(rng: np.random.Generator, family: str | None = None, holdout: bool = False) -> Kit:
    """A random kit of ``family`` (default: one of TRAIN_KITS, or HOLDOUT_KITS with ``holdout``)."""
    if family is None:
        family = str(rng.choice(HOLDOUT_KITS if holdout else TRAIN_KITS))
    if family not in TRAIN_KITS + HOLDOUT_KITS:
        raise ValueError(f"unknown drum kit family '{family}'; one of {', '.join(TRAIN_KITS + HOLDOUT_KITS)}")
    u = rng.uniform

    def log_u(low, high):
        return float(np.exp(u(np.log(low), np.log(high))))

    params = {
        "velocity_curve": float(u(1.0, 2.2)),
        "velocity_brightness": float(u(0.5, 2.0)),
        "dark_hz": log_u(800, 4000),
        "pitch_cents": float(u(10, 50)),  # per-variant random pitch change, +- this
        "decay_spread": float(u(0.05, 0.2)),  # per-variant random decay change, +- this fraction
        "kick": {"hz": log_u(42, 75), "sweep": float(u(1.5, 5.0)), "sweep_s": log_u(0.008, 0.06),
                 "decay_s": log_u(0.12, 0.6), "click": float(u(0.0, 0.5)), "drive": float(u(0.0, 3.0)),
                 "ratio": float(u(0.5, 1.6)), "index": float(u(0.5, 4.0))},
        "snare": {"hz": log_u(150, 260), "tone_decay_s": log_u(0.04, 0.18), "noise_decay_s": log_u(0.08, 0.35),
                  "noise": float(u(0.3, 0.85)), "noise_hz": log_u(1500, 6000), "ratio": float(u(1.3, 3.7)),
                  "index": float(u(3.0, 12.0))},
        "clap": {"hz": log_u(800, 2200), "q": float(u(0.7, 3.0)), "bursts": int(rng.integers(2, 5)),
                 "spacing_s": float(u(0.006, 0.015)), "decay_s": log_u(0.08, 0.3)},
        "side_stick": {"hz": log_u(350, 900), "click_hz": log_u(1500, 4000), "decay_s": log_u(0.015, 0.05)},
        "tom": {"low_hz": log_u(70, 120), "spread": float(u(0.8, 1.6)), "sweep": float(u(1.05, 1.6)),
                "decay_s": log_u(0.2, 0.8), "noise": float(u(0.0, 0.3)), "ratio": float(u(1.0, 1.6)),
                "index": float(u(0.5, 3.0))},
        "metal": {"scale": log_u(0.8, 1.6), "highpass_hz": log_u(4000, 8000), "noise": float(u(0.1, 0.7)),
                  "modes": int(rng.integers(30, 80)), "ratio": float(u(1.3, 3.9)), "index": float(u(2.0, 10.0))},
        "closed_hat": {"decay_s": log_u(0.02, 0.08)},
        "pedal_hat": {"decay_s": log_u(0.03, 0.1)},
        "open_hat": {"decay_s": log_u(0.2, 0.8)},
        "crash": {"decay_s": log_u(0.8, 2.5), "highpass_hz": log_u(2000, 5000)},
        "ride": {"decay_s": log_u(1.0, 3.0), "highpass_hz": log_u(2000, 5000), "ping_hz": log_u(2500, 5000)},
        "ride_bell": {"decay_s": log_u(0.5, 1.2)},
        "cowbell": {"hz": log_u(500, 900), "decay_s": log_u(0.08, 0.3)},
        "tambourine": {"decay_s": log_u(0.08, 0.25)},
        "perc": {"hz": log_u(250, 1200), "decay_s": log_u(0.04, 0.2)},
    }
    return Kit(family=family, params=params)


def _time(seconds: float, sample_rate: int) -> np.ndarray:
    return np.arange(int(seconds * sample_rate), dtype=np.float64) / sample_rate


def _decay(t: np.ndarray, decay_s: float) -> np.ndarray:
    """Exponential decay with a 0.5 ms linear attack (no click from a step)."""
    return np.minimum(t / 5e-4, 1.0) * np.exp(-t / decay_s)


def _swept_sine(t, hz, sweep, sweep_s, ratio=0.0, index=0.0, index_s=0.02):
    """sin of the integral of f(t) = hz (1 + (sweep - 1) exp(-t / sweep_s)) (closed form), with
    optional FM: a modulator at ``ratio`` times that phase, index decaying over index_s."""
    phase = 2 * np.pi * hz * (t + (sweep - 1) * sweep_s * (1 - np.exp(-t / sweep_s)))
    if index:
        phase = phase + index * np.exp(-t / index_s) * np.sin(ratio * phase)
    return np.sin(phase)


def _noise(t, rng):
    return rng.standard_normal(t.size)


def _band(x, low_hz, high_hz, sample_rate):
    return dsp.biquads(x, [dsp.highpass(low_hz, 0.707, sample_rate), dsp.lowpass(high_hz, 0.707, sample_rate)])


def _metal(t, p, sample_rate, family, rng, highpass_hz, tonal=1.0):
    """The cymbal/hat source, before its decay envelope."""
    m = p["metal"]
    if family == "analog":
        x = sum(dsp.pulse(oscillator_phase(f * m["scale"], t.size, sample_rate, start=rng.random()),
                          f * m["scale"] / sample_rate, 0.5) for f in METAL_808) / 3.0
    elif family == "modal":
        freqs = np.exp(rng.uniform(np.log(400), np.log(0.45 * sample_rate), m["modes"])) * m["scale"] ** 0.3
        decays = rng.uniform(0.1, 1.0, freqs.size) * (t[-1] if t.size else 1.0)
        x = dsp.modal_bank(freqs, decays, rng.uniform(0.2, 1.0, freqs.size), t.size, sample_rate,
                           rng.uniform(0, 2 * np.pi, freqs.size)) * (4.0 / np.sqrt(freqs.size))
    else:  # fm: two inharmonic operator pairs
        base = 2 * np.pi * 540.0 * m["scale"] * t
        x = np.sin(base + m["index"] * np.sin(m["ratio"] * base)) + np.sin(
            1.47 * base + m["index"] * 0.7 * np.sin(m["ratio"] * 1.93 * base))
    x = tonal * np.asarray(x) + m["noise"] * _noise(t, rng)
    return dsp.biquads(x, [dsp.highpass(highpass_hz, 0.707, sample_rate)] * 2)


def _render_piece(piece: str, key: int, kit: Kit, sample_rate: int, rng: np.random.Generator,
                  pitch: float, stretch: float) -> np.ndarray:
    """One hit at full velocity; ``pitch`` multiplies frequencies, ``stretch`` decay times."""
    p, fam = kit.params, kit.family
    if piece == "kick":
        k = p["kick"]
        t = _time(min(6 * k["decay_s"] * stretch, 2.0), sample_rate)
        hz = k["hz"] * pitch
        if fam == "modal":
            amps = 1.0 / np.arange(1, MEMBRANE.size + 1) ** 1.5
            body = dsp.modal_bank(MEMBRANE * hz, k["decay_s"] * stretch / MEMBRANE ** 2, amps, t.size, sample_rate)
            body = body + 0.7 * _swept_sine(t, hz, k["sweep"], k["sweep_s"]) * np.exp(-t / (k["sweep_s"] * 3))
        else:
            body = _swept_sine(t, hz, k["sweep"], k["sweep_s"], *((k["ratio"], k["index"]) if fam == "fm" else ()))
        x = body * _decay(t, k["decay_s"] * stretch)
        x = x + k["click"] * _band(_noise(t, rng), 1000, 8000, sample_rate) * np.exp(-t / 0.003)
        return np.tanh((1 + k["drive"]) * x) / np.tanh(1 + k["drive"])
    if piece == "snare":
        s = p["snare"]
        hz = s["hz"] * pitch * (1.12 if key == 40 else 1.0)
        t = _time(min(6 * max(s["tone_decay_s"], s["noise_decay_s"]) * stretch, 1.5), sample_rate)
        if fam == "modal":
            tone = dsp.modal_bank(MEMBRANE * hz, s["tone_decay_s"] * stretch / MEMBRANE, np.ones(MEMBRANE.size) / 2,
                                  t.size, sample_rate, rng.uniform(0, 2 * np.pi, MEMBRANE.size))
        elif fam == "fm":
            tone = _swept_sine(t, hz, 1.3, 0.01, s["ratio"], s["index"], s["tone_decay_s"]) * _decay(t, s["tone_decay_s"])
        else:
            tone = (_swept_sine(t, hz, 1.2, 0.01) + 0.6 * _swept_sine(t, hz * 1.7, 1.2, 0.01)) * _decay(
                t, s["tone_decay_s"] * stretch)
        wires = _band(_noise(t, rng), 0.3 * s["noise_hz"], min(2.5 * s["noise_hz"], 0.45 * sample_rate),
                      sample_rate) * _decay(t, s["noise_decay_s"] * stretch)
        return (1 - s["noise"]) * tone + s["noise"] * 1.5 * wires
    if piece == "clap":
        c = p["clap"]
        t = _time(0.05 + 6 * c["decay_s"] * stretch, sample_rate)
        env = np.zeros_like(t)
        for b in range(c["bursts"]):
            shifted = t - b * c["spacing_s"]
            env += (shifted >= 0) * np.exp(-np.maximum(shifted, 0) / 0.004)
        env += (t >= c["bursts"] * c["spacing_s"]) * np.exp(-np.maximum(t - c["bursts"] * c["spacing_s"], 0)
                                                           / (c["decay_s"] * stretch)) * 0.6
        source = np.sin(2 * np.pi * c["hz"] * t * (1 + 3 * np.sin(2 * np.pi * c["hz"] * 1.37 * t))) if fam == "fm" \
            else _noise(t, rng)
        return 3 * dsp.apply(dsp.bandpass(c["hz"] * pitch, c["q"], sample_rate), source) * np.minimum(env, 1.5)
    if piece == "side_stick":
        s = p["side_stick"]
        t = _time(8 * s["decay_s"] * stretch, sample_rate)
        tone = _swept_sine(t, s["hz"] * pitch, 1.1, 0.005, *((2.3, 3.0) if fam == "fm" else ()))
        click = dsp.apply(dsp.bandpass(s["click_hz"], 2.0, sample_rate), _noise(t, rng))
        return (0.6 * tone + 2.0 * click) * _decay(t, s["decay_s"] * stretch)
    if piece in ("tom", "perc", "cowbell"):
        if piece == "tom":
            m = p["tom"]
            index = TOM_KEYS.index(key) if key in TOM_KEYS else (key - 41) / 2
            hz = m["low_hz"] * 2 ** (index * 2 * m["spread"] / 12) * pitch
            decay = m["decay_s"] * stretch * (1.3 - 0.1 * index)
        else:
            m = p[piece]
            hz, decay = m["hz"] * pitch, m["decay_s"] * stretch
        t = _time(min(6 * decay, 2.5), sample_rate)
        if piece == "cowbell":
            x = sum(dsp.pulse(oscillator_phase(f, t.size, sample_rate), f / sample_rate, 0.5) for f in (hz, hz * 1.48))
            x = dsp.apply(dsp.bandpass(hz * 1.2, 2.0, sample_rate), x)
        elif fam == "modal":
            amps = 1.0 / np.arange(1, MEMBRANE.size + 1)
            x = dsp.modal_bank(MEMBRANE * hz, decay / MEMBRANE ** 1.5, amps, t.size, sample_rate)
        elif fam == "fm":
            x = _swept_sine(t, hz, p["tom"]["sweep"], 0.05, p["tom"]["ratio"], p["tom"]["index"], decay / 3)
        else:
            x = _swept_sine(t, hz, p["tom"]["sweep"], 0.08)
        x = x + p["tom"]["noise"] * _band(_noise(t, rng), 200, 4000, sample_rate) * np.exp(-t / 0.02)
        return x * _decay(t, decay)
    if piece == "tambourine":
        m = p["tambourine"]
        t = _time(6 * m["decay_s"] * stretch, sample_rate)
        jingles = _band(_noise(t, rng), 5000, 0.45 * sample_rate, sample_rate) * (
            1 + np.sin(2 * np.pi * 31 * t)) * _decay(t, m["decay_s"] * stretch)
        return 2 * jingles
    # Hats and cymbals.
    settings = p[piece]
    decay = settings["decay_s"] * stretch
    t = _time(min(6 * decay, 4.0) + 0.01, sample_rate)
    highpass = settings.get("highpass_hz", p["metal"]["highpass_hz"]) * (0.5 if piece == "ride_bell" else 1.0)
    x = _metal(t, p, sample_rate, fam, rng, min(highpass * pitch, 0.4 * sample_rate),
               tonal=2.0 if piece in ("ride", "ride_bell") else 1.0)
    if piece == "ride":
        x = x + 0.3 * np.sin(2 * np.pi * settings["ping_hz"] * pitch * t) * np.exp(-t / (decay / 2))
    return x * _decay(t, decay)


def render_drums(notes: list[MidiNote], kit: Kit, sample_rate: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """The drum part (note-ons only: drums are one-shots) as mono float32, peak <= 0.99."""
    for n in notes:
        if not (0 <= n.pitch <= 127 and 1 <= n.velocity <= 127 and np.isfinite(n.on) and n.on >= 0):
            raise ValueError(f"drum note {n}: key 0-127, velocity 1-127 and on >= 0 seconds needed")
    p = kit.params
    out = np.zeros(frames, np.float32)
    hits = sorted((n for n in notes if int(round(n.on * sample_rate)) < frames),
                  key=lambda n: (n.on, n.pitch, n.velocity))
    variants: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for key in sorted({n.pitch for n in hits}):  # per key, in key order: the draws do not depend on hit order
        piece = piece_of(key)
        bank = []
        for _ in range(VARIANTS):
            pitch = 2 ** (rng.uniform(-1, 1) * p["pitch_cents"] / 1200)
            stretch = 1 + rng.uniform(-1, 1) * p["decay_spread"]
            x = np.asarray(_render_piece(piece, key, kit, sample_rate, rng, pitch, stretch), np.float32)
            x = x / max(float(np.abs(x).max()), 1e-9)
            x = end_fade(x, sample_rate)
            bank.append((x, dsp.one_pole_lowpass(x, p["dark_hz"], sample_rate)))
        variants[key] = bank
    hat_onsets = [int(round(n.on * sample_rate)) for n in hits if piece_of(n.pitch) in HATS]
    for n in hits:
        start = int(round(n.on * sample_rate))
        bright, dark = variants[n.pitch][int(rng.integers(VARIANTS))]
        v = n.velocity / 127.0
        w = np.float32(v ** p["velocity_brightness"])
        x = (bright * w + dark * (1 - w)) * np.float32(0.5 * v ** p["velocity_curve"])
        end = min(frames, start + x.size)
        if piece_of(n.pitch) in HATS:  # choked by the next hat hit
            following = bisect_right(hat_onsets, start)
            choke = hat_onsets[following] + int(0.005 * sample_rate) if following < len(hat_onsets) else end
            if choke < end:  # a 5 ms fade from the choking hit on
                end = choke
                x = end_fade(x[:end - start].copy(), sample_rate, 0.005)
        out[start:end] += x[:end - start]
    return dsp.limit_peak(out)
