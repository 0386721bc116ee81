"""One module per concept; import models from here."""

from adapters_app.models.api_key import ApiKey
from adapters_app.models.audit import AuditEvent
from adapters_app.models.base_model import BaseModel
from adapters_app.models.dataset import Dataset
from adapters_app.models.evaluation import Evaluation, EvaluationItem
from adapters_app.models.job import Job
from adapters_app.models.person import Adapter, Person
from adapters_app.models.pointer import PointerEvent
from adapters_app.models.revision import Revision
from adapters_app.models.study import Study, StudyCell, StudyRun
from adapters_app.models.update import PersonalUpdate, RetrainPolicy
from adapters_app.models.worker import ResidencyStats, ResidentAdapter, Worker

__all__ = [
    "Adapter",
    "ApiKey",
    "AuditEvent",
    "BaseModel",
    "Dataset",
    "Evaluation",
    "EvaluationItem",
    "Job",
    "Person",
    "PersonalUpdate",
    "PointerEvent",
    "ResidencyStats",
    "ResidentAdapter",
    "RetrainPolicy",
    "Revision",
    "Study",
    "StudyCell",
    "StudyRun",
    "Worker",
]
