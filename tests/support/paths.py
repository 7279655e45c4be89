"""Where the checkout is, for tests that run its scripts or read its files."""
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]
