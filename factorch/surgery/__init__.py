"""Module surgery: match, replace and trace layers; fold BatchNorm."""

from factorch.surgery.modules import add_zero_bias as add_zero_bias
from factorch.surgery.modules import candidate_layers as candidate_layers
from factorch.surgery.modules import chain_stages as chain_stages
from factorch.surgery.modules import compressed_layers as compressed_layers
from factorch.surgery.modules import conv_bn_pairs as conv_bn_pairs
from factorch.surgery.modules import factorized_layers as factorized_layers
from factorch.surgery.modules import fold_batchnorms as fold_batchnorms
from factorch.surgery.modules import fold_bn_into_conv as fold_bn_into_conv
from factorch.surgery.modules import get_module as get_module
from factorch.surgery.modules import replace_module as replace_module
from factorch.surgery.modules import trace_layers as trace_layers

__all__ = [
    "add_zero_bias",
    "candidate_layers",
    "chain_stages",
    "conv_bn_pairs",
    "factorized_layers",
    "fold_batchnorms",
    "fold_bn_into_conv",
    "get_module",
    "replace_module",
    "trace_layers",
]
