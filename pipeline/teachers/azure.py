"""The `azure` teacher: Azure AI Foundry / Azure OpenAI through the OpenAI v1 API, with a key or Microsoft Entra ID.

    teacher:
      provider: azure
      model: Meta-Llama-3.1-405B-Instruct            # the DEPLOYMENT name on the resource
      base_url: https://<resource>.openai.azure.com/openai/v1/
      auth: entra                                    # keyless: DefaultAzureCredential (az login, managed identity...)
      # auth: key  +  api_key_env: AZURE_OPENAI_API_KEY   (the NAME of the variable, never the key)

The v1 API is the OpenAI API served by the Foundry resource, so this is the `openai` teacher (same client, same
transport, same error mapping, Batch API support) with Azure's URL and authentication:
  - auth: key   -> the `api-key` header from the variable named by teacher.api_key_env, and no Authorization
    header (the openai client's own bearer copy of the key is dropped by a request hook, `api_key_only`);
  - auth: entra -> `Authorization: Bearer <token>` from azure-identity's DefaultAzureCredential through
    `get_bearer_token_provider(credential, "https://cognitiveservices.azure.com/.default")`, passed to AsyncOpenAI
    as its api_key callable: azure-core caches the token and fetches a new one before it expires. The identity
    needs the "Cognitive Services OpenAI User" role on the resource.
A base_url without a path (https://<resource>.openai.azure.com) gets /openai/v1 appended. The retired
Azure AI Inference route (`.../models`) is the `azure-inference` teacher (teachers/azure_inference.py).

Seam for apps with their own identity (and for tests): `AzureTeacher(spec, credential=...)` takes any azure-core
credential (TokenCredential or AsyncTokenCredential: an object whose get_token(*scopes) returns an AccessToken);
register it under the provider name to use it for labelling:
    register_teacher("azure", functools.partial(AzureTeacher, credential=my_credential))
Tokens are never logged nor put in errors; a credential that cannot sign in stops the run with one sentence.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any
from urllib.parse import urlsplit

from ..errors import TeacherError
from ..redact import redact_url
from .openai import OpenAITeacher, api_key_from_env

__all__ = ["AzureTeacher", "ENTRA_SCOPE", "azure_v1_url", "entra_token_provider", "api_key_only", "default_credential"]

ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
ENTRA_HELP = ("sign in with `az login`, or give this machine a managed identity or AZURE_CLIENT_ID/AZURE_TENANT_ID/"
              "AZURE_CLIENT_SECRET, with the 'Cognitive Services OpenAI User' role on the resource")


def azure_v1_url(base_url: str | None, what: str = "teacher.base_url") -> str:
    """The v1 base URL of a Foundry / Azure OpenAI resource; SpecError-like TeacherError for missing or legacy URLs."""
    if not base_url:
        raise TeacherError(f"the azure teacher needs the resource URL; set {what}=https://<resource>.openai.azure.com/openai/v1/.")
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if path.endswith("/models"):
        raise TeacherError(f"{what} {redact_url(base_url)} is the retired Azure AI Inference route; use https://<resource>.openai.azure.com/openai/v1/ "
                           "(or provider azure-inference while the deployment still serves it).")
    if not path:
        return base_url.rstrip("/") + "/openai/v1"
    return base_url


def _sign_in_error(err: BaseException) -> TeacherError:
    out = TeacherError(f"Microsoft Entra ID sign-in failed ({type(err).__name__}); {ENTRA_HELP}.")
    out.fatal = True  # type: ignore[attr-defined]
    return out


def default_credential():
    """azure-identity's async DefaultAzureCredential (imported here: the package is only needed for auth: entra)."""
    try:
        from azure.identity.aio import DefaultAzureCredential
    except ImportError:
        raise TeacherError("auth: entra needs the azure-identity package; install it with `pip install azure-identity==1.27.0`.") from None
    return DefaultAzureCredential()


def entra_token_provider(credential: Any, scope: str = ENTRA_SCOPE):
    """An async zero-argument callable returning a bearer token for `scope` (cached, refreshed before expiry).

    credential: an AsyncTokenCredential or a (sync) TokenCredential. Sign-in failures become one fatal sentence
    that names the credential type and how to fix it, never the token or the identity's secrets.
    """
    from azure.core.exceptions import ClientAuthenticationError

    get = getattr(credential, "get_token_info", None) or credential.get_token
    if inspect.iscoroutinefunction(get):
        from azure.identity.aio import get_bearer_token_provider

        fetch = get_bearer_token_provider(credential, scope)
    else:
        from azure.identity import get_bearer_token_provider as sync_provider

        sync_fetch = sync_provider(credential, scope)

        async def fetch() -> str:
            return await asyncio.to_thread(sync_fetch)

    async def token() -> str:
        try:
            return await fetch()
        except ClientAuthenticationError as err:
            raise _sign_in_error(err) from None

    return token


async def api_key_only(request) -> None:
    """httpx request hook for key auth: Azure reads `api-key`; the key is not sent a second time as a bearer token."""
    if "api-key" in request.headers:
        request.headers.pop("Authorization", None)


class AzureTeacher(OpenAITeacher):
    """The openai teacher against an Azure v1 endpoint, authenticated by `api-key` or Microsoft Entra ID."""

    batch_endpoint = "/chat/completions"  # Azure's Batch API names the route without /v1
    batch_max_requests = 100_000  # Azure global batch: 100,000 requests and 200 MB per input file

    def __init__(self, spec, credential: Any | None = None) -> None:
        self._credential = credential
        self._own_credential = None  # a DefaultAzureCredential we made (and close)
        self._key_auth = False
        super().__init__(spec)

    def _base_url(self, spec) -> str:
        return azure_v1_url(spec.base_url)

    def _auth_options(self, spec) -> dict[str, Any]:
        if spec.auth == "entra":
            self.credential = "the Microsoft Entra ID token"
            credential = self._credential
            if credential is None:
                credential = self._own_credential = default_credential()
            return {"api_key": entra_token_provider(credential)}
        key = api_key_from_env(spec.api_key_env, required=True)
        self._key_auth = True
        return {"api_key": key, "default_headers": {"api-key": key}}

    def _event_hooks(self) -> dict[str, list]:
        return {"request": [api_key_only]} if self._key_auth else {}

    async def aclose(self) -> None:
        await super().aclose()
        if self._own_credential is not None:
            await self._own_credential.close()
