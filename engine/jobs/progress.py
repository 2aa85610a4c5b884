"""Progress of a job in a terminal."""

from __future__ import annotations

import sys


class ProgressBar:
    """A job's progress(fraction, message) on a tqdm bar on stderr (none with quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, unit="‰", bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                                                               "[{elapsed}<{remaining}]", file=sys.stderr)

    def __call__(self, fraction: float, message: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(message, refresh=False)
            self.bar.update(max(0, round(fraction * 1000) - self.bar.n))

    def write(self, line: str) -> None:
        """A line on stdout that does not break the bar."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
