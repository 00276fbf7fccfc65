"""The HTTP service: transcript scores and at-risk customers over JSON, from models loaded once at start-up."""
from carelens.inference.service.app import create_app
from carelens.inference.service.settings import ServiceSettings

__all__ = ["create_app", "ServiceSettings"]
