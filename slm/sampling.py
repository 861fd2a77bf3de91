"""How stories are sampled unless flags say otherwise. model_usage.py writes its stories with these
defaults, and evaluate.py samples the stories it measures with them, so its figures describe what
Step 6 prints."""

MAX_NEW_TOKENS = 300  # TinyStories stories are about 200 tokens; generation usually stops at EOT first
TEMPERATURE = 0.8  # below 1 sharpens the distribution; 0 is greedy
TOP_K = 200  # sample only among the 200 most likely tokens (None: all)
TOP_P = None  # nucleus sampling threshold (None: off)
