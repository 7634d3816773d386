import pytest

from astra.rollout.session import MODALITY_OF_WORLD, RolloutSession
from astra.serve.app import SessionFactory


@pytest.fixture
def factory(tiny_parts):
    model, vae, config = tiny_parts()

    def make_rollout(world: str) -> RolloutSession:
        return RolloutSession(model, vae, MODALITY_OF_WORLD[world], config)

    def make_simulator(world: str):
        from astra.worlds.base import make_world

        return make_world(world, size=(16, 16))

    return SessionFactory(make_rollout, make_simulator)
