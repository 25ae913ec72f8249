"""The pipeline: data contract and ingest, distributed training, tracking, scoring."""

from pipeline import mxnet_import

# Before anything of ours imports MXNet: its package import leaves out the two libraries it
# tries and never uses (pipeline/mxnet_import.py).
mxnet_import.install()
