"""Callbacks of rece-lightning (their composable configs live in the top-level ``callbacks/`` folder)."""

from rece_lightning.callbacks.attack_report import AttackReport
from rece_lightning.callbacks.classifier import ClassifierAccuracy
from rece_lightning.callbacks.clip_judge import CLIPZeroShotJudge
from rece_lightning.callbacks.clip_score import CLIPScoreMetric
from rece_lightning.callbacks.export import ExportEdit
from rece_lightning.callbacks.fid import FrechetDistance
from rece_lightning.callbacks.hparams import HParamsSummary
from rece_lightning.callbacks.image_grid import ImageGridLogger
from rece_lightning.callbacks.metric import ImageMetric
from rece_lightning.callbacks.nudenet import NudeNetMetric
from rece_lightning.callbacks.report import StageReport
from rece_lightning.callbacks.tradeoff import TradeoffLayout

__all__ = [
    "AttackReport",
    "CLIPScoreMetric",
    "CLIPZeroShotJudge",
    "ClassifierAccuracy",
    "ExportEdit",
    "FrechetDistance",
    "HParamsSummary",
    "ImageGridLogger",
    "ImageMetric",
    "NudeNetMetric",
    "StageReport",
    "TradeoffLayout",
]
