"""Pure decomposition math: tensors in, named tuples of float64 factors out (torch only, no ``torch.nn``).

Every function validates its input, computes in float64 on the input's device and is deterministic (given
``seed`` where randomness is involved). Casting back to the layer's dtype is the caller's job.
"""

from factorch.decompose._common import check_rank as check_rank
from factorch.decompose.cpd import CP as CP
from factorch.decompose.cpd import cp as cp
from factorch.decompose.cpd import cp_balance as cp_balance
from factorch.decompose.cpd import cp_max_rank as cp_max_rank
from factorch.decompose.cpd import cp_reconstruct as cp_reconstruct
from factorch.decompose.cpd import cp_sensitivity as cp_sensitivity
from factorch.decompose.cpd import cp_term_norms as cp_term_norms
from factorch.decompose.svd import SVD as SVD
from factorch.decompose.svd import SpatialSVD as SpatialSVD
from factorch.decompose.svd import spatial_svd as spatial_svd
from factorch.decompose.svd import spatial_svd_max_rank as spatial_svd_max_rank
from factorch.decompose.svd import spatial_svd_reconstruct as spatial_svd_reconstruct
from factorch.decompose.svd import truncated_svd as truncated_svd
from factorch.decompose.svd import truncated_svd_of_product as truncated_svd_of_product
from factorch.decompose.tt import TTMatrix as TTMatrix
from factorch.decompose.tt import factorize_dim as factorize_dim
from factorch.decompose.tt import tt_matrix as tt_matrix
from factorch.decompose.tt import tt_matrix_to_dense as tt_matrix_to_dense
from factorch.decompose.tt import tt_max_ranks as tt_max_ranks
from factorch.decompose.tucker import Tucker2 as Tucker2
from factorch.decompose.tucker import tucker2 as tucker2
from factorch.decompose.tucker import tucker2_of_tucker2 as tucker2_of_tucker2
from factorch.decompose.tucker import tucker2_reconstruct as tucker2_reconstruct

__all__ = [
    "CP",
    "SVD",
    "SpatialSVD",
    "TTMatrix",
    "Tucker2",
    "check_rank",
    "cp",
    "cp_balance",
    "cp_max_rank",
    "cp_reconstruct",
    "cp_sensitivity",
    "cp_term_norms",
    "factorize_dim",
    "spatial_svd",
    "spatial_svd_max_rank",
    "spatial_svd_reconstruct",
    "truncated_svd",
    "truncated_svd_of_product",
    "tt_matrix",
    "tt_matrix_to_dense",
    "tt_max_ranks",
    "tucker2",
    "tucker2_of_tucker2",
    "tucker2_reconstruct",
]
