"""What people use CLIP for, as libraries (no argparse here: the commands are in miniclip/cli/):
zero-shot classification with prompt ensembles (zeroshot.py), image search (search.py), linear probes
(probe.py), heat maps and traces (explain.py), and checking weights against the references (verify.py)."""
