"""astra.worlds: simulators that record action-labelled episodes (see base.py for the interface)."""

from astra.errors import AstraError


class EpisodeEnded(AstraError):
    """Raised by World.step when the simulator ended the episode on its own (e.g. a Doom exit line); the
    recorder keeps the frames so far."""
