"""How stories are sampled unless flags say otherwise. model_usage.py writes its stories with these
defaults, and evaluate.py samples the stories it measures with them, so its figures describe what
Step 6 prints. Glimpse is the short sample training.py prints (and logs) at each evaluation."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from config import EOT_ID, EOT_POSITION
from slm.encoding import get_encoding
from slm.hardware import autocast

# TinyStories stories are about 200 tokens; generation usually stops at EOT first
MAX_NEW_TOKENS = 300
TEMPERATURE = 0.8  # below 1 sharpens the distribution; 0 is greedy
TOP_K = 200  # sample only among the 200 most likely tokens (None: all)
TOP_P = None  # nucleus sampling threshold (None: off)

# A glimpse of the model at each evaluation of training.py (rank 0): the same prompt and seed every
# time, so one sample differs from the last only by what the model learned in between.
GLIMPSE_PROMPT = "Once upon a time"
GLIMPSE_TOKENS = 40


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """--max-new-tokens, --temperature, --top-k and --top-p, with the defaults above: the flags
    model_usage.py and evaluate.py share."""
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=MAX_NEW_TOKENS,
        help="most tokens to generate per story (default: %(default)s)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=TEMPERATURE,
        help="sampling temperature; 0 is greedy, always the most likely token (default: "
        "%(default)s)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=TOP_K,
        help="sample only among the k most likely tokens; 0: no limit (default: %(default)s)",
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=TOP_P,
        help="sample only among the most likely tokens whose probabilities sum to p (nucleus; "
        "default: off)",
    )


def encode_prompt(enc, prompt: str) -> list[int]:
    """[EOT] + the prompt's tokens: every training story follows an EOT, so a prompt starts a story.

    encode_ordinary treats the characters <|endoftext|> in a prompt as text, never as token 50256.
    """
    assert EOT_POSITION == "before", "prompt encoding assumes one EOT before every story"
    return [EOT_ID] + enc.encode_ordinary(prompt)


def continue_story(
    model,
    ids: list[int],
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator,
    stop_at_eot: bool = True,
) -> Iterator[tuple[int, object]]:
    """(token id, its (vocab,) logits) for each token sampled after ids, batch 1: the one story
    loop of model_usage.py and the studio, so one seed gives both the same story.
    model.sampling_probs(logits[None], ...) is the distribution each token was drawn from. The
    context keeps its last block_size tokens; the EOT that ends a story is not yielded (with
    stop_at_eot False, generation goes on through it). Call under autocast (generation runs
    without gradients by itself).
    """
    import torch

    device = next(model.parameters()).device
    idx = torch.tensor([ids[-model.config.block_size :]], dtype=torch.long, device=device)  # (1, T)
    eos_id = EOT_ID if stop_at_eot else None
    stream = model.generate_stream_logits(
        idx, max_new_tokens, temperature, top_k, top_p, eos_id, generator
    )
    for nxt, logits in stream:
        tok = int(nxt)
        if tok == eos_id:  # generate_stream yields the EOT it stops at: the story ends before it
            return
        yield tok, logits[0]


class Glimpse:
    """A short story from GLIMPSE_PROMPT, written by the model as it is now: one line of text.

    It samples from its own generator, seeded afresh each time, in eval mode (no dropout) and
    without gradients: the run's random states, weights and mode are as they were, so a run with
    glimpses trains exactly as one without, and --resume stays exact."""

    def __init__(
        self,
        device: str,
        dtype: str,
        seed: int,
        prompt: str = GLIMPSE_PROMPT,
        max_new_tokens: int = GLIMPSE_TOKENS,
    ):
        self.device, self.dtype, self.seed, self.max_new_tokens = (
            device,
            dtype,
            seed,
            max_new_tokens,
        )
        self.enc, self.prompt, self.eot = get_encoding(), prompt, EOT_ID
        # a story starts after an EOT, as in training
        self.ids = [EOT_ID] + self.enc.encode_ordinary(prompt)

    def __call__(self, model) -> str:
        import torch

        gen = torch.Generator(device=self.device).manual_seed(self.seed)
        idx = torch.tensor(
            [self.ids[-model.config.block_size :]], dtype=torch.long, device=self.device
        )
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), autocast(self.device, self.dtype):
                new = [
                    int(t)
                    for t in model.generate_stream(
                        idx,
                        self.max_new_tokens,
                        temperature=TEMPERATURE,
                        top_k=TOP_K,
                        top_p=TOP_P,
                        eos_id=self.eot,
                        generator=gen,
                    )
                ]
        finally:
            model.train(was_training)
        ended = bool(new) and new[-1] == self.eot
        text = self.prompt + self.enc.decode(new[:-1] if ended else new)
        # one line, whatever the model wrote
        return " ".join(text.split()) + (" <|endoftext|>" if ended else "")

    def describe(self) -> str:
        return (
            f'{self.max_new_tokens} tokens from "{self.prompt}", seed {self.seed}, '
            f"temperature {TEMPERATURE}, "
            f"top-k {TOP_K}"
        )
