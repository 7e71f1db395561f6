"""Shipped worlds and the recipe that trains them.

``load("doom-e1m1")`` returns the ready default world (:mod:`.shipped`); :mod:`.recipe` is
`matrixgame world build` (record, autoencoder, latents, decoder, light decoder, world
model, student, evaluation, shipping); :mod:`.card` writes the model card.
"""

from matrixgame.worlds.shipped import load_world as load
from matrixgame.worlds.shipped import world_folder, worlds_root

__all__ = ["load", "world_folder", "worlds_root"]
