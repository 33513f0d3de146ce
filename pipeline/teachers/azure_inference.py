"""The `azure-inference` teacher (legacy): the Azure AI Inference `.../models` route through `azure-ai-inference`.

Deprecated: Microsoft retires the Azure AI Inference beta SDK and its `.../models` endpoints on 2026-08-26; use
`provider: azure` (the OpenAI v1 API, teachers/azure.py). Kept for deployments that still serve this route.

    teacher:
      provider: azure-inference
      model: Phi-4                                   # deployment / model name on the endpoint
      base_url: https://<resource>.services.ai.azure.com/models
      api_key_env: AZURE_AI_API_KEY                  # the NAME of the variable (key auth only: Entra ID is `azure`)

Built on `azure.ai.inference.aio.ChatCompletionsClient` with azure-core's retries off (retry_total=0): the
labelling engine owns retries. HttpResponseError 429/408/409/5xx, timeouts and connection errors become
TransientError (Retry-After honoured); 401/403/404 a fatal TeacherError; other 4xx a TeacherError for the row.
"""

from __future__ import annotations

from typing import Any

from ..redact import endpoint
from .base import Teacher, TeacherAnswer, TeacherRequest, TransientError
from .openai import api_key_from_env, status_error, unreachable

__all__ = ["AzureInferenceTeacher"]


class AzureInferenceTeacher(Teacher):
    """Chat completions through the Azure AI Inference client; one request per answer."""

    def __init__(self, spec) -> None:
        super().__init__(spec)
        from azure.ai.inference.aio import ChatCompletionsClient
        from azure.core.credentials import AzureKeyCredential

        from ..errors import TeacherError

        if not spec.base_url:
            raise TeacherError("the azure-inference teacher needs an endpoint; set teacher.base_url=https://<resource>.services.ai.azure.com/models.")
        if spec.auth != "key":
            raise TeacherError("the azure-inference teacher takes teacher.auth=key only; for Microsoft Entra ID use provider azure (the v1 API).")
        key = api_key_from_env(spec.api_key_env, required=True)
        self.url = endpoint(spec.base_url)  # what sentences name: never the credentials a base_url may carry
        self._client = ChatCompletionsClient(
            endpoint=spec.base_url, credential=AzureKeyCredential(key),
            retry_total=0, connection_timeout=spec.timeout_s, read_timeout=spec.timeout_s,
            logging_enable=False,
        )

    async def answer(self, request: TeacherRequest) -> TeacherAnswer:
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        p = request.params
        kwargs: dict[str, Any] = {k: p[k] for k in ("max_tokens", "temperature", "top_p", "frequency_penalty", "presence_penalty", "stop") if p.get(k) is not None}
        try:
            result = await self._client.complete(messages=request.messages, model=self.spec.model, **kwargs)
        except HttpResponseError as err:
            status = err.status_code or 0
            headers = err.response.headers if err.response is not None else None
            if status < 400:  # a 2xx whose body could not be decoded
                raise TransientError(f"the teacher at {self.url} sent a malformed response") from None
            raise status_error(status, headers, err.message or "", self.url, self.spec.api_key_env, self.spec.model) from None
        except ServiceRequestError as err:  # connecting or sending failed
            raise unreachable(f"could not connect to the teacher at {self.url} ({type(err).__name__})") from None
        except ServiceResponseError:  # timeouts and dropped connections while waiting for the answer
            raise TransientError(f"the teacher at {self.url} did not answer within {self.spec.timeout_s:g} s or dropped the connection") from None
        except (ValueError, KeyError, TypeError):  # body that is not a completion
            raise TransientError(f"the teacher at {self.url} sent a malformed response") from None
        choice = result.choices[0]
        usage = result.usage
        reason = choice.finish_reason
        return TeacherAnswer(
            text=choice.message.content or "",
            finish_reason=str(reason.value if hasattr(reason, "value") else reason) if reason is not None else None,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        )

    async def aclose(self) -> None:
        await self._client.close()
