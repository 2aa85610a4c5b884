"""A Slakh2100-like multi-stem dataset that the project renders itself.

By concern: corpus (pieces and their timing), arrangement (voices to
instruments), drums (a generated part), rendering (MIDI to audio, levels, mix),
dataset (tracks, splits, resuming); generated (songs the project composes:
harmony, textures, grooves); timbres (which instrument plays each stem);
instruments (synthesised families and effects); sampler (recorded
multi-samples and drum kits played from MidiNotes), fetch_samples (installs
them, pinned), avldrums (the avldrums.lv2 recorded kits through fluidsynth).

Slakh2100 cannot be downloaded here, so we make a small stand-in the same way
Slakh was made: MIDI rendered with sampled instruments, one file per stem.

* Music: 4-part pieces from the music21 corpus (Bach chorales, Palestrina
  mass movements, Haydn/Mozart/Beethoven/Schumann string quartet movements).
  The lowest voice becomes the bass stem; the three upper voices are split at
  random between guitar and piano.
* Generated songs (generated.py, opt-in): chord progressions in sections
  with bass lines, strums, picking, pads, comping and melodies (harmony.py,
  textures.py) and genre grooves (grooves.py); ``arrange_track`` gives a
  track from either source. The extended corpus set (5-6-part pieces and
  EXTRA_COMPOSERS) is opt-in too: ``plan_tracks(..., extended=True)``.
* Drums: generated per bar from each piece's own meter and the track's tempo
  (kick on strong beats, snare on backbeats, hi-hat/ride on subdivisions,
  fills at phrase ends, crashes after them).
* Rendering: the ``fluidsynth`` command line with a General MIDI SoundFont,
  reverb and chorus off so the stems stay dry and sum to the mix.

Output (the paper's converted layout, read by ``training.data``)::

    OUT/dataset.json                      summary (also returned)
    OUT/{train,valid,test}/TrackNNNNN/    bass.wav drums.wav guitar.wav piano.wav
                                          mix.wav metadata.json midi/<stem>.mid
    OUT/.cache/pieces/*.json              note lists parsed from the corpus

All WAVs are mono float32 at ``sample_rate``; ``mix`` is exactly
``((bass + drums) + guitar) + piano`` computed in float32 from the stems as
written. Splits are by piece, so no piece is heard in two splits. The same
seed and track count give byte-identical files, whatever ``jobs`` is.
"""

from __future__ import annotations

from . import arrangement, corpus, dataset, drums, rendering
from .arrangement import STEMS, arrange
from .corpus import Bar, MidiNote, Piece, SynthError, Timeline, TrackPlan, UnusablePiece, load_piece, plan_tracks
from .dataset import GENERATOR_VERSION, render_dataset, render_track
from .drums import DRUM_CHANNEL, KICK, SIDE_STICK, SNARE, SNARE_2, drum_notes
from .rendering import find_soundfont

__all__ = ["GENERATOR_VERSION", "STEMS", "SynthError", "find_soundfont", "render_dataset", "render_track", "arrange",
           "Bar", "MidiNote", "Piece", "Timeline", "TrackPlan", "UnusablePiece", "load_piece", "plan_tracks",
           "DRUM_CHANNEL", "KICK", "SIDE_STICK", "SNARE", "SNARE_2", "drum_notes",
           "arrangement", "corpus", "dataset", "drums", "rendering"]
