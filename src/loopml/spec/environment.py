"""Environment overrides of the spec, applied once where ``loopml.yaml`` is loaded.

Secrets such as database passwords belong in the environment, not in a file
under version control. These variables, when set and not empty, replace the
key they name; no other module reads the environment for configuration.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ValidationError

from loopml.errors import SpecError
from loopml.spec.model import Spec

#: variable -> (section, key) of the spec it overrides
OVERRIDES: dict[str, tuple[str, str]] = {
    "LOOPML_REGISTRY_URL": ("storage", "registry_url"),
    "LOOPML_PREDLOG_URL": ("storage", "prediction_log_url"),
    "LOOPML_REDIS_URL": ("storage", "redis_url"),
    "LOOPML_WEBHOOK_URL": ("monitoring", "webhook_url"),
}


def apply_environment(spec: Spec, environ: Mapping[str, str]) -> Spec:
    """The spec with each set override applied and validated like the file (a copy; ``spec`` is unchanged)."""
    sections: dict[str, BaseModel] = {}
    for variable, (name, key) in OVERRIDES.items():
        value = environ.get(variable)
        if not value:
            continue
        section: BaseModel = sections.get(name, getattr(spec, name))
        try:
            sections[name] = type(section).model_validate({**section.model_dump(), key: value})
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"] if exc.errors() else str(exc)
            raise SpecError(f"environment variable {variable}", [f"{name}.{key}: {reason}"]) from None
    return spec.model_copy(update=sections) if sections else spec
