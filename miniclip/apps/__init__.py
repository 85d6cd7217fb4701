"""What people use CLIP for, as libraries (no argparse here: the commands are in miniclip/cli/):
zero-shot classification with prompt ensembles (zeroshot.py), an image index (index.py) and search over it
(search.py; on a Dask cluster: cluster.py), linear probes (probe.py), heat maps and traces (explain.py), and
checking weights against the references (verify.py)."""
