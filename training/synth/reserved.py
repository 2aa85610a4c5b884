"""Material reserved for evaluation: never train, tune or select models on it.

The project's check of "does the separator survive music it has never heard"
(`msdm dataset unseen`, training/synth/unseen.py; docs/models.md, "Material
the project has never heard") is only honest while training never touches
these. tests/test_unseen.py checks that the training corpus and the training
renderer's SoundFonts stay clear of them.
"""

from __future__ import annotations

# music21 corpus folders: Monteverdi's 5- and 6-part madrigals (books 3-5) and
# Josquin's 4- and 5-voice chansons.
RESERVED_COMPOSERS = ("monteverdi", "josquin")

# Debian packages of the renderer: the TiMidity++ synthesiser, its GUS patch
# set, and Hydrogen's recorded drum kits.
RESERVED_TOOLS = ("timidity", "freepats", "hydrogen-drumkits")

# Where those packages put their sounds; no training SoundFont may come from here.
RESERVED_SOUND_FOLDERS = ("/usr/share/midi/freepats", "/usr/share/hydrogen/data/drumkits", "/etc/timidity")
