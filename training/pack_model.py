"""One model file for every task: the diffusion prior plus the first-guess
separator, and optionally the latent prior (stem autoencoder + latent
diffusion model).

    python -m training.pack_model --prior engine/models/default.safetensors \\
        --separator runs/sep/best.safetensors -o engine/models/default.safetensors
    python -m training.pack_model --prior engine/models/default.safetensors \\
        --autoencoder training/checkpoints/autoencoder-v1.safetensors \\
        --latent-prior training/checkpoints/latent-prior-v1.safetensors -o runs/latent.safetensors

The prior's weights and config are kept as they are; each part given replaces
the same part of the prior's file: the separator's tensors go in under
`separator.`, the autoencoder's under `autoencoder.`, the latent model's under
`latent_prior.`, each with its config (engine.storage.model).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch

from engine.core.autoencoder import AutoencoderConfig, StemAutoencoder
from engine.core.latent_prior import LatentDenoiser, LatentPriorConfig, LatentUNet
from engine.errors import ModelFileError
from engine.storage.model import MSDMModel, load_separator
from training.part_files import AUTOENCODER_FORMAT, LATENT_PRIOR_FORMAT, read_part


def load_latent_prior(path: Path) -> LatentDenoiser:
    """A train_latent_prior file: the prior, or an autoguidance guide for one
    (engine.core.latent_prior.AutoGuided)."""
    config, tensors = read_part(path, LATENT_PRIOR_FORMAT)
    net = LatentUNet(LatentPriorConfig.from_dict(config))
    net.load_state_dict(tensors, strict=True)
    return LatentDenoiser(net).eval()


def load_latent_parts(autoencoder: Path, latent_prior: Path) -> tuple[StemAutoencoder, LatentDenoiser]:
    config, tensors = read_part(autoencoder, AUTOENCODER_FORMAT)
    encoder = StemAutoencoder(AutoencoderConfig.from_dict(config))
    encoder.load_state_dict(tensors, strict=True)
    return encoder.eval(), load_latent_prior(latent_prior)


# How each latent sampling setting reads in a file's provenance line.
SETTING_NOTES = {
    "autoguidance": lambda value, stems: f"autoguidance {value:g}",
    "span_projection": lambda value, stems: f"span projection {'on' if value else 'off'}",
    "sample_scale": lambda value, stems: f"sampling scale {value:g}",
    "sample_stem_scales": lambda value, stems: "sampling scales per stem " + (
        ", ".join(f"{n} {v:g}" for n, v in zip(stems, value)) if value else "off"),
    "sample_stem_gains": lambda value, stems: ("level-matching gains " + ", ".join(
        f"{n} {20 * math.log10(v):+.1f} dB" for n, v in zip(stems, value))) if value else "",
}


def set_latent_settings(model: MSDMModel, **settings) -> list[str]:
    """Set the latent prior's sampling settings that are given (not None) in
    its config (LatentPriorConfig fields, SETTING_NOTES's keys); the notes
    for the file's provenance line. New per-stem scales drop the gains that
    were measured at the old ones unless gains come with them."""
    changes = {name: value for name, value in settings.items() if value is not None}
    if not changes:
        return []
    if model.latent_prior is None:
        given = " and ".join("--" + name.replace("_", "-") for name in changes)
        raise ModelFileError(f"{given}: the latent prior's, and the model has none")
    if "sample_stem_scales" in changes:
        changes.setdefault("sample_stem_gains", ())
    prior = model.latent_prior
    prior.config = prior.net.config = dataclasses.replace(prior.config, **changes)
    notes = [SETTING_NOTES[name](value, model.stems) for name, value in changes.items()]
    return [note for note in notes if note]


def same_weights(first: torch.nn.Module | None, second: torch.nn.Module | None) -> bool:
    """Whether two networks hold the same tensors (compared in float32: a
    float16-stored part equals its float32 file once rounded the same way)."""
    if first is None or second is None:
        return first is second
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and torch.equal(a[k].half().float(), b[k].half().float()) for k in a)


def pack(prior: Path, separator: Path | None, out: Path, source: str | None = None,
         autoencoder: Path | None = None, latent_prior: Path | None = None,
         latent_storage: str | None = None, latent_guide: Path | None = None,
         autoguidance: float | None = None, span_projection: bool | None = None,
         sample_scale: float | None = None, sample_stem_scales: tuple[float, ...] | None = None,
         sample_stem_gains: tuple[float, ...] | None = None,
         locked_phase_stems: tuple[str, ...] | None = None) -> MSDMModel:
    if (autoencoder is None) != (latent_prior is None):
        raise ModelFileError("a latent prior needs both --autoencoder and --latent-prior")
    model = MSDMModel.load(prior)
    notes = [model.source]
    if separator is not None:
        model.separator, meta = load_separator(separator)
        notes.append(f"first-guess separator from {separator.name} (step {meta.get('step', '?')})")
    if autoencoder is not None:
        before = model.autoencoder
        model.autoencoder, model.latent_prior = load_latent_parts(autoencoder, latent_prior)
        notes.append(f"latent prior {latent_prior.name} over autoencoder {autoencoder.name}")
        if model.latent_guide is not None and latent_guide is None and not same_weights(before, model.autoencoder):
            # The guide learned another autoencoder's latents: guiding with it would
            # pull samples toward what those latents meant. Dropped, not kept silently.
            model.latent_guide = None
            notes.append("the earlier autoguidance guide dropped (trained over another autoencoder's latents)")
    if latent_guide is not None:
        if model.latent_prior is None:
            raise ModelFileError("--latent-guide guides a latent prior: give one (--autoencoder, --latent-prior) "
                                 "or a --prior file that has one")
        model.latent_guide = load_latent_prior(latent_guide)
        notes.append(f"latent guide {latent_guide.name}")
    notes += set_latent_settings(model, autoguidance=autoguidance, span_projection=span_projection,
                                 sample_scale=sample_scale, sample_stem_scales=sample_stem_scales,
                                 sample_stem_gains=sample_stem_gains)
    if locked_phase_stems is not None:
        if model.autoencoder is None:
            raise ModelFileError("--locked-phase-stems: the autoencoder's, and the model has none")
        model.autoencoder.config = dataclasses.replace(model.autoencoder.config,
                                                       locked_phase_stems=tuple(locked_phase_stems))
        notes.append("phase-locked vocoder for " + (", ".join(locked_phase_stems) or "no stem"))
    if latent_storage is not None:
        model.latent_storage = latent_storage
    model.__post_init__()  # checks the parts agree on the stems and puts them in eval mode
    model.save(out, source=source or "; ".join(notes))
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior", type=Path, required=True, help="an MSDM Studio model file (the diffusion prior)")
    parser.add_argument("--separator", type=Path, help="a separator file from training.train_separator")
    parser.add_argument("--autoencoder", type=Path, help="a stem autoencoder file from training.train_autoencoder")
    parser.add_argument("--latent-prior", type=Path, help="a latent diffusion file from training.train_latent_prior")
    parser.add_argument("--latent-storage", choices=("float32", "float16"),
                        help="how the autoencoder and latent model are stored (default: as in --prior's file, "
                             "else float32; float16 halves their size, computing stays float32)")
    parser.add_argument("--latent-guide", type=Path,
                        help="a weaker latent diffusion file in the latent prior's diffusion space (train_latent_prior "
                             "--space), packed as its autoguidance guide")
    parser.add_argument("--autoguidance", type=float,
                        help="the autoguidance weight the file samples with by default (chosen on VALID; 1: off)")
    parser.add_argument("--span-projection", action=argparse.BooleanOptionalAction, default=None,
                        help="sample with the latent prior's estimate at the data mean outside its output layer's "
                             "span (engine.core.latent_prior.SpanProjected; default: as in --prior's file)")
    parser.add_argument("--sample-scale", type=float,
                        help="the latent prior's unguided sampling scale (LatentPriorConfig.sample_scale)")
    parser.add_argument("--sample-stem-scales", type=float, nargs="*", metavar="SCALE",
                        help="one unguided sampling scale per stem, in the model's stem order (chosen on VALID by "
                             "training.choose_sample_scales); none: back to --sample-scale for every stem")
    parser.add_argument("--locked-phase-stems", nargs="*", metavar="STEM",
                        help="stems decoded with the phase-locked vocoder's phase instead of Griffin-Lim "
                             "(engine.core.phase; chosen on VALID); none: Griffin-Lim for every stem")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--source", help="the provenance line stored in the file")
    args = parser.parse_args(argv)
    settings = (args.autoguidance, args.span_projection, args.sample_scale, args.sample_stem_scales,
                args.locked_phase_stems)
    if args.separator is None and args.autoencoder is None and args.latent_guide is None and all(
            v is None for v in settings):
        parser.error("give --separator, or --autoencoder with --latent-prior (or all three), or --latent-guide, "
                     "--autoguidance, --span-projection, --sample-scale, --sample-stem-scales or --locked-phase-stems")
    stem_scales = None if args.sample_stem_scales is None else tuple(args.sample_stem_scales)
    try:
        model = pack(args.prior, args.separator, args.out, args.source, args.autoencoder, args.latent_prior,
                     args.latent_storage, args.latent_guide, args.autoguidance, args.span_projection,
                     args.sample_scale, stem_scales,
                     locked_phase_stems=None if args.locked_phase_stems is None else tuple(args.locked_phase_stems))
    except (ModelFileError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {args.out}: prior {model.num_parameters:,} parameters + separator "
          f"{model.separator_parameters:,} parameters + latent prior {model.latent_parameters:,} parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
