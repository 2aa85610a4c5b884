"""Test helpers the tests import (they do not ship in the package): a closed-form
Gaussian prior (gaussian_prior) and an OSC reply collector (osc_replies)."""
