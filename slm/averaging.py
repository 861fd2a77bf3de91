"""The weights a run keeps: an exponential moving average of the trained weights (--ema), which
evaluation scores and best_model_params.pt saves, while the optimizer goes on training the
weights themselves.

At the cpu preset's step counts the model still learns fast, so its learning rate must not decay
near zero, and the last steps' weights are noisy. Averaging the last ~100 of them (decay 0.99)
removes much of that noise without slowing the learning, and lets the rate end higher still (the
runs: benchmarks/recipe_rule.md, "The weights' average, and the floor it allows").
"""

from __future__ import annotations

import contextlib

import torch


class WeightAverage:
    """avg_t = the average of the weights after steps 1..t, each step's weight decay times the next
    one's.

    Kept unbiased from the first step on (as Adam's moments are): update t mixes in the new
    weights with weight (1 - decay) / (1 - decay^t), so avg_1 is the weights after step 1, and
    the initial weights (before any step) never count. The average is float32, one copy of every
    trainable parameter.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Mix in the weights as they are now (call once after each optimizer step)."""
        self.updates += 1
        weight = (1 - self.decay) / (1 - self.decay**self.updates)
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], weight)

    @contextlib.contextmanager
    def swapped_in(self):
        """Inside, the model's parameters hold the average (to evaluate or save it); after, the
        trained weights, bit for bit. The swap is in place, tensor by tensor: the parameters stay
        the same tensors (a compiled model and the optimizer keep pointing at them), and it needs
        one tensor's worth of memory more."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    @torch.no_grad()
    def _swap(self) -> None:
        for p, a in zip(self.params, self.average):
            kept = p.detach().clone()
            p.copy_(a)
            a.copy_(kept)

    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "updates": self.updates,
            "average": [a.clone() for a in self.average],
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["average"]) != len(self.average):
            raise ValueError(
                f"the saved average has {len(state['average'])} tensors, the model "
                f"{len(self.average)}"
            )
        for a, saved in zip(self.average, state["average"]):
            a.copy_(saved)
        self.decay, self.updates = state["decay"], state["updates"]


@contextlib.contextmanager
def averaged_weights(average: WeightAverage | None):
    """The model's weights as a run keeps them: the average where there is one (--ema above 0), else
    as trained.
    """
    with average.swapped_in() if average is not None else contextlib.nullcontext():
        yield
