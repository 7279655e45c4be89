"""``SimulatedWorld`` under its torch front end's name; the simulator itself is framework-neutral
(:mod:`hvdkit.simulate`) and serves the TensorFlow front end too."""
from hvdkit.simulate import SimulatedWorld

__all__ = ["SimulatedWorld"]
