"""Teachers by name: openai (any OpenAI-compatible server), azure (Azure AI Foundry / Azure OpenAI v1 API, key or
Microsoft Entra ID), azure-inference (the retired Azure AI Inference `.../models` route), local (transformers).

The built-in teachers register on import of this package; their heavy imports happen when one is built.
"""

from .base import Teacher, TeacherAnswer, TeacherRequest, TransientError, get_teacher, register_teacher, teacher_names

__all__ = ["Teacher", "TeacherAnswer", "TeacherRequest", "TransientError", "get_teacher", "register_teacher", "teacher_names"]


def _register_builtins() -> None:
    from .azure import AzureTeacher
    from .azure_inference import AzureInferenceTeacher
    from .local import LocalTeacher
    from .openai import OpenAITeacher

    register_teacher("openai", OpenAITeacher)
    register_teacher("azure", AzureTeacher)
    register_teacher("azure-inference", AzureInferenceTeacher)
    register_teacher("local", LocalTeacher)


_register_builtins()
