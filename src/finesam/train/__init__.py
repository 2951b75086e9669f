"""Training: the HQ-SAM recipe and the two-stage Pi-SAM recipe on a frozen SAM (``finesam train``).

    from finesam.train import TrainConfig, train
    train(TrainConfig(recipe="hq", model="hq_vit_tiny", random_weights=True,
                      data=[("ECSSD", Path("../shared/data/ecssd"))], out=Path("runs/x"), max_steps=10))
"""

from .engine import TrainConfig, TrainResult, train
from .losses import point_sampled_mask_loss
from .recipes import RECIPES, Recipe, get_recipe

__all__ = ["TrainConfig", "TrainResult", "train", "point_sampled_mask_loss", "RECIPES", "Recipe", "get_recipe"]
