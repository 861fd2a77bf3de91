"""Export a checkpoint as a Hugging Face `transformers` GPT-2 model directory, loadable offline:

    python export_hf.py                                  # out/best_model_params.pt -> out/hf/
    python export_hf.py --checkpoint runs/a/best_model_params.pt --out-dir hf_model

    from transformers import pipeline
    print(pipeline("text-generation", model="out/hf")("Once upon a time")[0]["generated_text"])

Writes config.json, generation_config.json, model.safetensors (GPT-2 parameter names; GPT-2's
Conv1D layers store Linear weights transposed; the LM head is tied to the token embedding so it
is not stored), the GPT-2 tokenizer (vocab.json, merges.txt, tokenizer.json,
tokenizer_config.json, special_tokens_map.json) and a README.md model card. The project's
architecture is GPT-2's, so the export is exact. Every training story follows an <|endoftext|>,
so the tokenizer puts one before each prompt, as model_usage.py does. The card carries the
licence, the data, evaluate.py's figures (from --eval, by default eval.json beside the
checkpoint) and the training facts (from the run's ckpt.pt and report.md when they are there).
Neither `transformers` nor the network is needed to export; `safetensors` is.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from config import EOT_ID, VOCAB_SIZE, Paths
from slm.checkpoint import CKPT_FILE, config_from_dict, describe_source, load_checkpoint
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


# ----------------------------------------------------------------------------- the tokenizer


def tokenizer_json(gpt2_files: dict[str, bytes]) -> dict:
    """GPT-2's BPE in the `tokenizers` library's format, with a post-processor that puts
    <|endoftext|> before every text: what fast tokenizers (AutoTokenizer, pipeline) load. The
    slow GPT2Tokenizer does the same from tokenizer_config.json's add_bos_token."""
    eot = {"SpecialToken": {"id": EOT_TEXT, "type_id": 0}}
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    merges = gpt2_files["vocab.bpe"].decode("utf-8").split("\n")[1:]  # after the version line
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": EOT_ID,
                "content": EOT_TEXT,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "special": True,
            }
        ],  # fmt: skip
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [eot, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                eot,
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": EOT_TEXT, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {EOT_TEXT: {"id": EOT_TEXT, "ids": [EOT_ID], "tokens": [EOT_TEXT]}},
        },  # fmt: skip
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": json.loads(gpt2_files["encoder.json"]),
            "merges": [m for m in merges if m],
        },
    }


def as_json(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def tokenizer_files(block_size: int) -> dict[str, bytes]:
    """The GPT-2 tokenizer as transformers loads it, slow and fast, <|endoftext|> before a
    prompt."""
    # GPT-2's encoder.json and vocab.bpe are, byte for byte, transformers' vocab.json and merges.txt
    gpt2_files = gpt2_file_bytes()
    special = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": block_size,
        "add_prefix_space": False,
        "add_bos_token": True,  # <|endoftext|> before a prompt, as before every story in training
        **special,
    }
    return {
        "vocab.json": gpt2_files["encoder.json"],
        "merges.txt": gpt2_files["vocab.bpe"],
        "tokenizer.json": json.dumps(tokenizer_json(gpt2_files), ensure_ascii=False).encode(),
        "special_tokens_map.json": as_json(special),
        "tokenizer_config.json": as_json(config),
    }


# ----------------------------------------------------------------------------- the model card


def read_eval(path: Path | None, ckpt: dict) -> dict | None:
    """evaluate.py's JSON for this checkpoint, or None when there is none; CLIError when it
    scored another step (the figures would not describe this model)."""
    if path is None or not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        loss = float(result["loss"])
    except (ValueError, KeyError, TypeError) as e:
        raise CLIError(f"--eval {path} is not evaluate.py's output ({e})") from None
    if result.get("step") != ckpt.get("step"):
        raise CLIError(
            f"--eval {path} scored step {result.get('step')}, the checkpoint is step "
            f"{ckpt.get('step')}: run evaluate.py again"
        )
    return {**result, "loss": loss}


def eval_command(result: dict) -> str:
    """The evaluate.py command that measured result (scoring only: --num-samples 0)."""
    scored = result.get("scored") or {}
    cmd = f"python evaluate.py --checkpoint {result.get('checkpoint')}"
    if scored.get("text_file"):
        cmd += f" --text-file {scored['text_file']}"
    else:
        cmd += f" --data-dir {scored.get('data_dir')} --split {scored.get('split')}"
    if result.get("stride") not in (None, result.get("window")):
        cmd += f" --stride {result['stride']}"
    return cmd + " --num-samples 0"


def training_facts(checkpoint: Path, ckpt: dict) -> dict:
    """Steps, tokens and machine of the run that wrote the checkpoint, from its folder's ckpt.pt
    (the resume state) and report.md; whatever is missing stays out."""
    facts = {"steps": ckpt.get("step")}
    run = checkpoint.parent
    try:
        state = load_checkpoint(run / CKPT_FILE, mmap=True)
    except CLIError:
        state = {}
    tc = state.get("train_config") or {}
    at_best = [h for h in state.get("history") or [] if h.get("step") == ckpt.get("step")]
    if at_best and at_best[-1].get("tokens"):
        facts["tokens"] = at_best[-1]["tokens"]
    if tc:
        facts["batch"] = (
            f"{tc.get('batch_size')} x {tc.get('grad_accum')} sequences per step, "
            f"{tc.get('dtype')}, preset {state.get('preset')}"
        )
    report = run / "report.md"
    if report.is_file():
        found = re.search(r"^\| machine \| (.+) \|$", report.read_text(encoding="utf-8"), re.M)
        if found:
            facts["machine"] = found.group(1)
    return facts


def card_metadata(ckpt: dict, result: dict | None) -> str:
    """The card's YAML front matter: licence, data, task, and evaluate.py's figures."""
    source = (ckpt.get("data") or {}).get("source") or {}
    lines = ["---", "license: mit", "library_name: transformers", "pipeline_tag: text-generation"]
    lines += ["language: [en]", "tags: [gpt2, tinystories, slm-from-scratch]"]
    if source.get("source") in ("sample", "hub"):  # local files have no hub name
        lines += ["datasets:", f"- {source.get('dataset', 'roneneldan/TinyStories')}"]
    if result is not None:
        scored = result.get("scored") or {}
        on = scored.get("text_file") or f"{scored.get('split')} split"
        lines += [
            "model-index:",
            "- name: slm-from-scratch-tinystories",
            "  results:",
            "  - task: {type: text-generation}",
            f"    dataset: {{type: roneneldan/TinyStories, name: 'TinyStories ({on})'}}",
            "    metrics:",
            f"    - {{type: loss, value: {result['loss']:.4f}, name: loss (nats per token)}}",
            f"    - {{type: perplexity, value: {result['perplexity']:.3f}}}",
        ]
        if result.get("bits_per_byte") is not None:
            lines.append(f"    - {{type: bits_per_byte, value: {result['bits_per_byte']:.4f}}}")
    return "\n".join(lines + ["---", ""])


def model_card(ckpt: dict, cfg, num_params: int, result: dict | None, facts: dict) -> str:
    val = ckpt.get("val_loss")
    val = "not recorded" if val is None else f"{float(val):.4f}"
    shape = (
        f"{num_params / 1e6:.1f}M parameters: {cfg.n_layer} layers, {cfg.n_head} heads, width "
        f"{cfg.n_embd}, context {cfg.block_size} tokens, GPT-2 tokenizer (50,257 tokens)"
    )
    training = [
        f"- {facts['steps']} steps" + (f", {facts['tokens']:,} tokens" if "tokens" in facts else "")
    ]
    training += [f"- {facts[k]}" for k in ("batch", "machine") if k in facts]
    if result is None:
        scores = (
            "Not measured at export. Measure with `python evaluate.py --checkpoint CHECKPOINT "
            "--num-samples 0 > eval.json` and export again with `--eval eval.json`."
        )
    else:
        bpb = result.get("bits_per_byte")
        scores = (
            f"| loss (nats per token) | perplexity | bits per byte |\n|---|---|---|\n"
            f"| {result['loss']:.4f} | {result['perplexity']:.3f} | "
            f"{'n/a' if bpb is None else f'{bpb:.4f}'} |\n\nMeasured on "
            f"{result.get('tokens_scored', '?'):,} tokens with `{eval_command(result)}` "
            f"({result.get('windowing', 'windows of the context length')})."
        )
    return (
        f"{card_metadata(ckpt, result)}\n# A small GPT trained on TinyStories with "
        f"SLM-from-Scratch\n\n- {shape}\n- {describe_source(ckpt)}\n- best validation loss "
        f"during training {val} (at step {ckpt.get('step')})\n\n## Evaluation\n\n{scores}\n\n"
        "## Training\n\n" + "\n".join(training) + "\n\n## Use\n\n"
        "Every training story follows the end-of-text token `<|endoftext|>` (id 50256), so the "
        "tokenizer puts one before each prompt, as the project's `model_usage.py` does:\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer, pipeline\n\n"
        "write = pipeline('text-generation', model=PATH)\nprint(write('Once upon a time', "
        "max_new_tokens=100, do_sample=True, top_k=200, temperature=0.8)[0]['generated_text'])"
        "\n\ntok = AutoTokenizer.from_pretrained(PATH)\nmodel = "
        "AutoModelForCausalLM.from_pretrained(PATH)\nids = tok('Once upon a time', "
        "return_tensors='pt').input_ids  # [50256, 7454, 2402, 257, 640]\n"
        "print(tok.decode(model.generate(ids, max_new_tokens=100)[0], skip_special_tokens=True))"
        "\n```\n\nThe context is "
        f"{cfg.block_size} tokens: keep prompt and story within it.\n\n## Licence\n\n"
        "The code that trained it is MIT-licensed. The TinyStories data (Eldan & Li, 2023) is "
        "under CDLA-Sharing-1.0.\n"
    )


def export(
    ckpt: dict, out_dir: str | Path, result: dict | None = None, facts: dict | None = None
) -> Path:
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
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out-dir {out} exists and is not a directory")
    num_params = sum(t.numel() for t in tensors.values())
    files = {
        "model.safetensors": safetensors_bytes(tensors, metadata={"format": "pt"}),
        "config.json": as_json(hf_config(cfg)),
        "generation_config.json": as_json(
            {"bos_token_id": EOT_ID, "eos_token_id": EOT_ID, "pad_token_id": EOT_ID}
        ),
        **tokenizer_files(cfg.block_size),
        "README.md": model_card(
            ckpt, cfg, num_params, result, facts or {"steps": ckpt.get("step")}
        ).encode(),
    }
    check_free_space(
        out,
        space_to_replace(out, {name: len(data) for name, data in files.items()}),
        f"the export ({len(files)} files)",
        "--out-dir",
    )
    # all new or all as they were: never a mixed export
    atomic_write_files(out, files, flag="--out-dir")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Write a checkpoint as a transformers GPT-2 directory (config.json, "
        "model.safetensors, tokenizer files, a model card) that AutoModelForCausalLM, "
        "AutoTokenizer and pipeline('text-generation') load with no network.",
    )
    p.add_argument(
        "--checkpoint",
        default=Paths.best_model,
        help="model file written by training.py (default: %(default)s)",
    )
    p.add_argument(
        "--out-dir",
        "--out",
        dest="out_dir",
        default=None,
        help="directory to write, created; files in it are replaced (default: hf/ beside the "
        "checkpoint, e.g. out/hf)",
    )
    p.add_argument(
        "--eval",
        default=None,
        help="evaluate.py's JSON output for this checkpoint, whose loss, perplexity and bits per "
        "byte go into the model card (default: eval.json beside the checkpoint, if there)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    checkpoint = Path(args.checkpoint)
    ckpt = load_checkpoint(checkpoint)
    out = Path(args.out_dir) if args.out_dir else checkpoint.parent / "hf"
    result = read_eval(Path(args.eval) if args.eval else checkpoint.parent / "eval.json", ckpt)
    if args.eval and result is None:
        raise CLIError(f"--eval {args.eval} does not exist")
    export(ckpt, out, result, training_facts(checkpoint, ckpt))
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"exported {checkpoint} (step {ckpt.get('step')}) to {out}/: {files}")
    if result is None:
        print(
            f"the model card has no evaluation: python evaluate.py --checkpoint {checkpoint} "
            f"--num-samples 0 > {checkpoint.parent / 'eval.json'}, then export again"
        )
    print(f"load it with: pipeline('text-generation', model={str(out)!r})")
    return out


if __name__ == "__main__":
    run_cli(main)
