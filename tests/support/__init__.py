"""Test helpers the tests import (they do not ship in the package): a closed-form
Gaussian prior (gaussian_prior), an OSC reply collector (osc_replies), special
input files and `msdm` as a process (special_files)."""
