"""Getting published weights: the registry of models by name (registry.py, models.json), downloading and
verifying them from the Hugging Face hub (download.py), and converting a checkpoint to float16/bfloat16
(convert.py). The model never needs this wing: `miniclip.load` reads any local file without it."""
