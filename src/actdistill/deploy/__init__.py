"""Deployment: single-video prediction (:class:`Recognizer`, :class:`FewShotRecognizer`) and ONNX export."""

from actdistill.deploy.fewshot import FewShotRecognizer
from actdistill.deploy.recognizer import Prediction, Recognizer

__all__ = ["FewShotRecognizer", "Prediction", "Recognizer"]
