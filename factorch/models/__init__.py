"""Reference models: ``create_model(name)``, ``list_models(pattern)``."""

from factorch.models import compact as compact
from factorch.models import lenet as lenet
from factorch.models import mobilenet as mobilenet
from factorch.models import resnet as resnet
from factorch.models import resnet50 as resnet50
from factorch.models import vgg as vgg
from factorch.models._registry import create_model as create_model
from factorch.models._registry import is_model as is_model
from factorch.models._registry import list_models as list_models
from factorch.models._registry import model_card as model_card
from factorch.models._registry import register_model as register_model
from factorch.models._registry import weights_path as weights_path

__all__ = ["create_model", "is_model", "list_models", "model_card", "register_model", "weights_path"]
