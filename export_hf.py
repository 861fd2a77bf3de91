"""Export a checkpoint as a Hugging Face `transformers` GPT-2 model directory, loadable offline:

    python export_hf.py --checkpoint out/best_model_params.pt --out hf_model

    from transformers import AutoTokenizer, GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained("hf_model")
    tokenizer = AutoTokenizer.from_pretrained("hf_model")

Writes config.json, generation_config.json, model.safetensors (GPT-2 parameter names; GPT-2's
Conv1D layers store Linear weights transposed; the LM head is tied to the token embedding so it
is not stored), the GPT-2 tokenizer files (vocab.json, merges.txt, tokenizer_config.json,
special_tokens_map.json) and a short README.md model card. The project's architecture is GPT-2's,
so the export is exact. Neither `transformers` nor the network is needed to export; `safetensors`
is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from config import EOT_ID, VOCAB_SIZE, Paths
from slm.checkpoint import config_from_dict, describe_source, load_checkpoint
from slm.cli import CLIError, run_cli
from slm.encoding import EOT_TEXT, gpt2_file_bytes
from slm.files import atomic_write_files, check_free_space, space_to_replace


def hf_config(cfg) -> dict:
    """transformers' GPT2Config for our GPTConfig, as the plain dict config.json holds."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,  # learned position embeddings: the context length
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,  # 4 * n_embd, as in our MLP
        # exact erf GELU, like torch.nn.GELU() (GPT-2's own is "gelu_new")
        "activation_function": "gelu",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": 1e-5,  # torch.nn.LayerNorm's default
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": EOT_ID,
        "eos_token_id": EOT_ID,
        "use_cache": True,
        "torch_dtype": "float32",
        "dtype": "float32",
    }


def hf_state_dict(state: dict, cfg) -> dict:
    """Our parameters under GPT2LMHeadModel's names, Linear weights transposed for Conv1D, as
    float32.

    Every tensor of ours is used exactly once (the tied LM head is checked equal to the embedding
    and left out, as transformers ties it on load); a model without biases gets exact zero
    biases."""
    import torch

    # A causal-mask buffer (nanoGPT calls it attn.bias) is not a parameter: GPT-2 in transformers
    # builds its own.
    ours = {k: v for k, v in state.items() if not k.endswith((".attn.bias", ".attn.mask"))}
    out, used = {}, set()

    def take(name: str, transpose: bool = False, shape=None):
        if name in ours:
            used.add(name)
            t = ours[name].detach().to(torch.float32)
            return (t.t() if transpose else t).contiguous()
        if shape is None:
            raise CLIError(f"checkpoint has no parameter {name!r}; is it a model.py GPT?")
        if cfg.bias:
            raise CLIError(f"checkpoint has bias=True but no {name!r}")
        return torch.zeros(shape)  # bias=False: a zero bias is exactly no bias

    d = cfg.n_embd
    out["transformer.wte.weight"] = take("transformer.wte.weight")
    out["transformer.wpe.weight"] = take("transformer.wpe.weight")
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            out[p + ln + ".weight"] = take(p + ln + ".weight")
            out[p + ln + ".bias"] = take(p + ln + ".bias", shape=(d,))
        for name, width in (
            ("attn.c_attn", 3 * d),
            ("attn.c_proj", d),
            ("mlp.c_fc", 4 * d),
            ("mlp.c_proj", d),
        ):
            # (out, in) -> Conv1D's (in, out)
            out[p + name + ".weight"] = take(p + name + ".weight", transpose=True)
            out[p + name + ".bias"] = take(p + name + ".bias", shape=(width,))
    out["transformer.ln_f.weight"] = take("transformer.ln_f.weight")
    out["transformer.ln_f.bias"] = take("transformer.ln_f.bias", shape=(d,))
    if "lm_head.weight" in ours:
        if not torch.equal(ours["lm_head.weight"], ours["transformer.wte.weight"]):
            raise CLIError(
                "the checkpoint's LM head is not tied to its token embedding; GPT-2 ties them"
            )
        used.add("lm_head.weight")
    left = sorted(set(ours) - used)
    if left:
        raise CLIError(f"checkpoint has parameters this exporter does not know: {left[:5]}")
    return out


def model_card(ckpt: dict, cfg, num_params: int) -> str:
    val = ckpt.get("val_loss")
    return (
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [gpt2, "
        "tinystories]\n---\n\n# A small GPT trained on TinyStories with SLM-from-Scratch\n\n- "
        f"{num_params / 1e6:.1f}M parameters: {cfg.n_layer} layers, {cfg.n_head} heads, width "
        f"{cfg.n_embd}, context {cfg.block_size} tokens, GPT-2 tokenizer\n- "
        f"{describe_source(ckpt)}\n- step {ckpt.get('step')}, validation loss "
        f"{val if val is None else round(float(val), 4)}\n\nStories start after the end-of-text "
        "token: prompt with `<|endoftext|>` + your text.\n\n```python\nfrom transformers import "
        "AutoTokenizer, GPT2LMHeadModel\ntok = AutoTokenizer.from_pretrained(PATH)\nmodel = "
        "GPT2LMHeadModel.from_pretrained(PATH)\nids = tok('<|endoftext|>Once upon a time', "
        "return_tensors='pt').input_ids\nprint(tok.decode(model.generate(ids, "
        "max_new_tokens=100, do_sample=True, top_k=200)[0]))\n```\n"
    )


def export(ckpt: dict, out_dir: str | Path) -> Path:
    """Write the Hugging Face directory for a checkpoint dict; returns the directory.

    Every file is made in memory first and the disk's free space checked, so a disk too small
    refuses before anything is replaced; the files are then written beside the old ones and
    renamed in together, so a failure leaves the previous export whole (never new weights beside
    an old config.json)."""
    try:
        from safetensors.torch import save as safetensors_bytes
    except ImportError:
        raise CLIError("export needs the safetensors package: pip install safetensors") from None

    cfg = config_from_dict(ckpt["config"])
    if cfg.vocab_size != VOCAB_SIZE:
        raise CLIError(
            f"checkpoint vocabulary is {cfg.vocab_size} tokens, not GPT-2's {VOCAB_SIZE}; it "
            "cannot be paired with the GPT-2 tokenizer"
        )
    tensors = hf_state_dict(ckpt["model"], cfg)
    # GPT-2's encoder.json and vocab.bpe are, byte for byte, transformers' vocab.json and merges.txt
    gpt2_files = gpt2_file_bytes()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")

    def as_json(obj: dict) -> bytes:
        return (json.dumps(obj, indent=2) + "\n").encode()

    special = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}
    num_params = sum(t.numel() for t in tensors.values())
    files = {
        "model.safetensors": safetensors_bytes(tensors, metadata={"format": "pt"}),
        "config.json": as_json(hf_config(cfg)),
        "generation_config.json": as_json(
            {"bos_token_id": EOT_ID, "eos_token_id": EOT_ID, "pad_token_id": EOT_ID}
        ),
        "vocab.json": gpt2_files["encoder.json"],
        "merges.txt": gpt2_files["vocab.bpe"],
        "special_tokens_map.json": as_json(special),
        "tokenizer_config.json": as_json(
            {
                "tokenizer_class": "GPT2Tokenizer",
                "model_max_length": cfg.block_size,
                "add_prefix_space": False,
                "add_bos_token": False,
                **special,
            }
        ),
        "README.md": model_card(ckpt, cfg, num_params).encode(),
    }
    check_free_space(
        out,
        space_to_replace(out, {name: len(data) for name, data in files.items()}),
        f"the export ({len(files)} files)",
        "--out",
    )
    # all new or all as they were: never a mixed export
    atomic_write_files(out, files, flag="--out")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Write a checkpoint as a transformers GPT2LMHeadModel directory (config.json, "
        "model.safetensors, tokenizer files) that from_pretrained loads with no network.",
    )
    p.add_argument(
        "--checkpoint",
        default=Paths.best_model,
        help="model file written by training.py (default: %(default)s)",
    )
    p.add_argument(
        "--out", required=True, help="directory to write (created; files in it are replaced)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    out = export(ckpt, args.out)
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"exported {args.checkpoint} (step {ckpt.get('step')}) to {out}/: {files}")
    print(
        f"load it with: GPT2LMHeadModel.from_pretrained({str(out)!r}), "
        f"AutoTokenizer.from_pretrained({str(out)!r})"
    )
    return out


if __name__ == "__main__":
    run_cli(main)
