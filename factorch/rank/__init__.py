"""Rank selection: one set of callables for every method."""

from factorch.rank.selectors import EnergyRank as EnergyRank
from factorch.rank.selectors import FixedRank as FixedRank
from factorch.rank.selectors import FractionRank as FractionRank
from factorch.rank.selectors import MACRatioRank as MACRatioRank
from factorch.rank.selectors import ParamRatioRank as ParamRatioRank
from factorch.rank.selectors import RankLike as RankLike
from factorch.rank.selectors import RankProblem as RankProblem
from factorch.rank.selectors import RankSelector as RankSelector
from factorch.rank.selectors import Spectrum as Spectrum
from factorch.rank.selectors import VBMFRank as VBMFRank
from factorch.rank.selectors import as_selector as as_selector
from factorch.rank.vbmf import evbmf_rank as evbmf_rank

__all__ = [
    "EnergyRank",
    "FixedRank",
    "FractionRank",
    "MACRatioRank",
    "ParamRatioRank",
    "RankLike",
    "RankProblem",
    "RankSelector",
    "Spectrum",
    "VBMFRank",
    "as_selector",
    "evbmf_rank",
]
