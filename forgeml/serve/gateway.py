"""The one request pipeline of the serving API, the same for local and upstream models:
authenticate (API key) → authorise (scopes, clearance, rate limits) → policy in → engine or
upstream (`serve/generation.py`) → policy out → audit, each refusal recorded where it happens.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import anyio
from fastapi import Request

from forgeml.core.errors import DataError
from forgeml.governance.audit import AuditLog
from forgeml.governance.keys import KeyStore, Principal
from forgeml.governance.policy import EffectiveRules, Policy, PolicyDecision, PolicyViolation
from forgeml.serve.engine import SamplingParams
from forgeml.serve.loading import ServedModel
from forgeml.serve.media import (
    MEDIA_WORKERS,
    PART_KINDS,
    MediaPart,
    PromptMedia,
    decode_media,
    expanded_ids,
    media_messages,
    media_part_types,
    media_parts,
    placeholder_strings,
    refuse_placeholders,
)
from forgeml.serve.metrics import ServeMetrics
from forgeml.serve.output import governed_messages
from forgeml.serve.requests import (
    ApiError,
    RateLimiter,
    RequestLimits,
    check_chat_messages,
    check_prompt_chars,
    context_char_bound,
    mark_recorded,
)
from forgeml.serve.schemas import ChatRequest, CompletionRequest, GenerationRequest
from forgeml.tokenizer.chat import render_chat

# Default completion budgets when a request gives none (OpenAI: 16 for completions).
DEFAULT_COMPLETION_TOKENS = 16
DEFAULT_CHAT_TOKENS = 256
# The audit log's `endpoint` of each route (any other path is recorded by its path).
ROUTE_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/audio/transcriptions": "transcriptions",
    "/v1/models": "models",
    "/metrics": "metrics",
    "/openapi.json": "openapi",
}


@dataclass
class Call:
    """What one generation request resolved to: for an engine, the tokenized prompt and the
    sampling parameters; for an upstream, the governed body to forward (`payload`)."""

    principal: Principal
    endpoint: str
    model: ServedModel
    rules: EffectiveRules | None  # the output rules, None when there are none
    decisions: list[PolicyDecision]
    started: float
    include_usage: bool = False
    prompt_text: str = ""
    prompt_ids: list[int] = field(default_factory=list)
    params: SamplingParams | None = None
    stop_ids: frozenset[int] = frozenset()
    payload: dict[str, Any] = field(default_factory=dict)
    tools: bool = False
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    media: PromptMedia | None = None  # a vision/audio LM's decoded images and audio
    media_audit: list[dict[str, Any]] = field(default_factory=list)  # their hashes


class Gateway:
    """The governance around the served `models`: keys, policy, limits, metrics and audit.
    `keys=None` turns authentication off (every request acts as an `anonymous` admin)."""

    def __init__(
        self,
        models: dict[str, ServedModel],
        *,
        keys: KeyStore | None,
        policy: Policy | None = None,
        audit: AuditLog | None = None,
        log_bodies: bool = False,
        max_default_tokens: int = DEFAULT_CHAT_TOKENS,
        limits: RequestLimits | None = None,
    ) -> None:
        self.models, self.keys, self.audit = models, keys, audit
        self.policy = policy or Policy()
        self.limits = limits or RequestLimits()
        self.log_bodies, self.max_default_tokens = log_bodies, max_default_tokens
        self.char_bounds = {
            m.name: context_char_bound(m.tokenizer, m.engine.max_len)
            for m in models.values()
            if m.engine is not None
        }
        self.limiter = RateLimiter()
        self.metrics = ServeMetrics()
        # Media parsing, fetching and decoding share these threads, not the ones text uses.
        self.media_threads = anyio.CapacityLimiter(MEDIA_WORKERS)

    # -- authenticate ------------------------------------------------------------------

    def authenticated(self, endpoint: str) -> Callable[[Request], Principal]:
        """The route dependency: the principal of the request's key, allowed on `endpoint`."""

        def authenticate(request: Request) -> Principal:
            if self.keys is None:
                principal = Principal("anonymous", "-", roles=("admin",), clearance="restricted")
                request.state.principal = principal
                return principal
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            principal = (
                self.keys.authenticate(token.strip()) if scheme.lower() == "bearer" else None
            )
            if principal is None:
                # One answer for a missing, malformed, unknown, wrong or revoked key.
                mark_recorded(request.scope)
                self.audit_event(
                    "auth_denied", endpoint=endpoint, client=_client(request), status=401
                )
                self.metrics.inc(
                    "forgeml_requests_total", endpoint=endpoint, model="-", status="401"
                )
                raise ApiError(
                    401,
                    "invalid or missing API key",
                    "authentication_error",
                    "invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            request.state.principal = principal
            if not principal.may_call(endpoint):
                self.deny(principal, endpoint, None, "endpoint_scope", request)
            return principal

        return authenticate

    # -- authorise ---------------------------------------------------------------------

    def find_model(self, name: str) -> ServedModel | None:
        return self.models.get(name) or next(
            (m for m in self.models.values() if name in m.names), None
        )

    async def authorise(
        self, principal: Principal, endpoint: str, body: GenerationRequest, request: Request
    ) -> tuple[ServedModel, EffectiveRules, list[PolicyDecision]]:
        """The model asked for, if the key may use it: model scope, clearance against the
        model's label as the registry has it now, then the key's rate limits."""
        served = self.find_model(body.model)
        # Out of scope and unknown look the same to a restricted key: no probing for names.
        if not principal.may_use_model({body.model} | (served.names if served else set())):
            self.deny(principal, endpoint, body.model, "model_scope", request)
        if served is None:
            raise ApiError(404, f"model '{body.model}' is not served here", code="model_not_found")
        names = [served.name, *sorted(served.names)]
        current = served.current_label
        label = await current.current() if current is not None else served.label
        label = self.policy.model_label(names, label)
        try:
            decisions = [self.policy.check_clearance(principal.name, principal.clearance, label)]
        except PolicyViolation as exc:
            self.deny(principal, endpoint, served.name, exc.decision.rule, request, str(exc))
        rules = self.policy.rules_for(names, principal.name)
        try:
            self.limiter.admit(principal)
        except ApiError as exc:
            self.record(None, principal, endpoint, served, exc.status, request, decisions, exc=exc)
            raise
        return served, rules, decisions

    def deny(
        self,
        principal: Principal,
        endpoint: str,
        model: str | None,
        rule: str,
        request: Request,
        message: str = "this key is not permitted to do that",
    ) -> NoReturn:
        """Refuse with 403, recorded with the rule that refused."""
        mark_recorded(request.scope)
        self.audit_event(
            "request",
            principal=principal.name,
            key_id=principal.key_id,
            endpoint=endpoint,
            model=model,
            client=_client(request),
            status=403,
            decisions=[{"rule": rule, "action": "denied", "count": 1}],
        )
        self.metrics.inc(
            "forgeml_requests_total", endpoint=endpoint, model=model or "-", status="403"
        )
        raise ApiError(403, message, "permission_error", "forbidden")

    # -- policy in ---------------------------------------------------------------------

    async def prepare(
        self,
        principal: Principal,
        endpoint: str,
        body: ChatRequest | CompletionRequest,
        request: Request,
    ) -> Call:
        """Authorise `body` and apply the input policy to it: the `Call` for the model's engine
        (tokenized off the event loop) or its upstream (the body to forward). A refusal is
        recorded with the decisions that led to it."""
        started = time.perf_counter()
        served, rules, decisions = await self.authorise(principal, endpoint, body, request)
        opts = body.stream_options
        call = Call(
            principal,
            endpoint,
            served,
            rules if (rules.output_blocked or rules.output_redact) else None,
            decisions,
            started,
            include_usage=bool(opts and opts.include_usage),
        )
        try:
            if served.upstream is not None and _has_media(body):
                # Off the event loop: the media parts' base64 is decoded for the audit's hashes.
                await anyio.to_thread.run_sync(
                    self._forwarded, call, rules, body, limiter=self.media_threads
                )
            elif served.upstream is not None:
                self._forwarded(call, rules, body)
            else:
                await self._tokenized(call, rules, body)
        except PolicyViolation as exc:
            decisions.append(exc.decision)
            err = ApiError(400, str(exc), code="policy_violation")
            raise self._refused(call, request, err) from None
        except DataError as exc:  # a chat the template cannot render
            raise self._refused(call, request, ApiError(400, exc.message)) from None
        except ApiError as exc:
            self._refused(call, request, exc)
            raise
        return call

    async def _tokenized(
        self, call: Call, rules: EffectiveRules, body: ChatRequest | CompletionRequest
    ) -> None:
        """Render (chat) and tokenize the prompt for the engine. Its length is checked against
        the model's context before tokenizing, which runs off the event loop."""
        served = call.model
        context = served.engine.max_len
        parts: list[MediaPart] = []
        if isinstance(body, ChatRequest):
            tools = body.tools if body.tool_choice != "none" else None
            messages = [m.model_dump(exclude_none=True) for m in body.messages]
            check_chat_messages(
                messages,
                served.name,
                max_messages=self.limits.max_messages,
                context=context,
                media=media_part_types(served.multimodal),
            )
            if served.multimodal is not None:
                marks = placeholder_strings(served.multimodal, served.tokenizer)
                messages, parts = await anyio.to_thread.run_sync(
                    media_messages, messages, marks, rules, self.limits, call.media_audit,
                    limiter=self.media_threads if _has_media(body) else None,
                )  # fmt: skip
            text, ids = render_chat(messages, add_generation_prompt=True, tools=tools), None
            requested = body.max_completion_tokens or body.max_tokens
            default, stops = self.max_default_tokens, ("end", "eos")
            call.tools = bool(tools)
        else:
            text, ids = _completion_prompt(body.prompt)
            requested, default, stops = body.max_tokens, DEFAULT_COMPLETION_TOKENS, ("eos",)
        if text is not None:
            check_prompt_chars(
                len(text),
                context_bound=self.char_bounds[served.name],
                limit=self.limits.max_prompt_chars,
                context=context,
            )
            text, ids, fired = await anyio.to_thread.run_sync(
                self._govern_and_tokenize, served, rules, text
            )
            call.decisions += fired
            if parts:
                ids = await anyio.to_thread.run_sync(
                    self._with_media, call, parts, ids, limiter=self.media_threads
                )
        if served.multimodal is not None and not parts:
            refuse_placeholders(ids or [], served.multimodal)
        elif any(not 0 <= t < served.tokenizer.get_vocab_size() for t in ids or []):
            vocab = served.tokenizer.get_vocab_size()
            raise ApiError(400, f"prompt: token ids must be in [0, {vocab})")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        budget = requested or default
        if rules.max_tokens is not None:
            budget = min(budget, rules.max_tokens)
        call.params = SamplingParams(
            max_tokens=budget,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            stop=tuple(s for s in stop if s),
            seed=body.seed,
        )
        if not ids:
            ids = [served.special_ids["eos"]]
        if len(ids) >= context:
            raise ApiError(
                400,
                f"the prompt is {len(ids)} tokens; this model's context is {context} tokens",
                code="context_length_exceeded",
            )
        if call.principal.tokens_per_minute is not None:
            self.limiter.add_tokens(call.principal, len(ids))
        call.prompt_ids, call.prompt_text = ids, text if text is not None else ""
        call.stop_ids = frozenset(served.special_ids[s] for s in stops)

    def _refused(self, call: Call, request: Request, exc: ApiError) -> ApiError:
        """`exc`, recorded as the answer to a call refused while it was being prepared."""
        self.record(
            None, call.principal, call.endpoint, call.model, exc.status, request, call.decisions,
            exc=exc, media=call.media_audit,
        )  # fmt: skip
        return exc

    def _with_media(self, call: Call, parts: list[MediaPart], ids: list[int]) -> list[int]:
        """Decode the call's media for the engine; the prompt ids with its placeholders
        expanded to the media's feature counts."""
        cfg = call.model.multimodal
        call.media, image_counts, audio_counts = decode_media(parts, cfg, self.limits)
        return expanded_ids(ids, cfg, image_counts, audio_counts)

    def _govern_and_tokenize(
        self, served: ServedModel, rules: EffectiveRules, text: str
    ) -> tuple[str, list[int], list[PolicyDecision]]:
        text, fired = self.policy.apply_input(rules, text)
        return text, served.tokenizer.encode(text).ids, fired

    def _forwarded(
        self, call: Call, rules: EffectiveRules, body: ChatRequest | CompletionRequest
    ) -> None:
        """The body for the upstream, its texts through the input policy (the upstream renders
        and tokenizes) and its budget capped by the rules. The audited prompt is the governed
        one, as in engine mode: what the input rules redacted is not logged."""
        payload = body.model_dump(exclude_none=True)
        payload["model"] = call.model.upstream_model
        if isinstance(body, ChatRequest):
            # The media policy holds here too; the upstream decodes (and fetches) the media.
            media_parts(
                payload["messages"], rules, self.limits, fetch=False, audit=call.media_audit
            )
            payload["messages"], prompt, fired = governed_messages(
                self.policy, rules, payload["messages"]
            )
            requested = body.max_completion_tokens or body.max_tokens
        else:
            text, ids = _completion_prompt(body.prompt)
            if ids:
                raise ApiError(400, "prompt: give text in upstream mode (the policy reads it)")
            payload["prompt"], fired = self.policy.apply_input(rules, text or "")
            prompt = payload["prompt"]
            requested = body.max_tokens
        call.decisions += fired
        if rules.max_tokens is not None:
            payload.pop("max_completion_tokens", None)
            payload["max_tokens"] = min(requested or rules.max_tokens, rules.max_tokens)
        call.payload, call.prompt_text = payload, prompt
        call.tools = bool(payload.get("tools")) and payload.get("tool_choice") != "none"

    # -- audit -------------------------------------------------------------------------

    def audit_event(self, event: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.append(event, **fields)

    def record(
        self,
        call: Call | None,
        principal: Principal,
        endpoint: str,
        served: ServedModel,
        status: int,
        request: Request,
        decisions: list[PolicyDecision],
        *,
        exc: ApiError | None = None,
        usage: dict[str, Any] | None = None,
        finish_reason: str | None = None,
        completion: str | None = None,
        media: list[dict[str, Any]] | None = None,
    ) -> None:
        """The audit entry and metrics of one generation request (`call` once prepared);
        `media`: the sha256 of each image and audio part (never their bytes)."""
        fields: dict[str, Any] = {
            "principal": principal.name,
            "key_id": principal.key_id,
            "endpoint": endpoint,
            "model": served.name,
            "model_version": served.asset_id,
            "client": _client(request),
            "status": status,
            "decisions": [d.as_dict() for d in decisions],
        }
        metrics = self.metrics
        if call is not None:
            fields["request_id"] = call.request_id
            fields["latency_ms"] = round(1000 * (time.perf_counter() - call.started), 1)
            metrics.observe_latency(time.perf_counter() - call.started, endpoint=endpoint)
        if usage:
            fields.update(usage)
            metrics.inc("forgeml_prompt_tokens_total", usage["prompt_tokens"], model=served.name)
            metrics.inc(
                "forgeml_completion_tokens_total", usage["completion_tokens"], model=served.name
            )
        if media:
            fields["media"] = media
        if finish_reason:
            fields["finish_reason"] = finish_reason
        if exc is not None:
            fields["error"] = exc.code or exc.kind
        if self.log_bodies and call is not None:
            fields["prompt"] = call.prompt_text or call.prompt_ids
            fields["completion"] = completion
        for d in decisions:
            metrics.inc("forgeml_policy_decisions_total", rule=d.rule, action=d.action)
        metrics.inc(
            "forgeml_requests_total", endpoint=endpoint, model=served.name, status=str(status)
        )
        mark_recorded(request.scope)
        self.audit_event("request", **fields)

    def record_call(self, call: Call, request: Request, status: int, **outcome: Any) -> None:
        """`record` of a prepared call (outcome: exc, usage, finish_reason, completion)."""
        self.record(
            call,
            call.principal,
            call.endpoint,
            call.model,
            status,
            request,
            call.decisions,
            media=call.media_audit,
            **outcome,
        )

    def record_unrecorded(self, scope: dict[str, Any], status: int) -> None:
        """The audit entry of a response no route recorded (see `RequestGuard`)."""
        path = scope.get("path", "")
        if path == "/healthz" and status == 200:
            return  # liveness probes are not requests for anything
        principal = scope["state"].get("principal")
        endpoint = ROUTE_ENDPOINTS.get(path)
        client = scope.get("client")
        # Its own event: "request" entries are the generation requests, with their model.
        self.audit_event(
            "http_request",
            principal=principal.name if principal else None,
            key_id=principal.key_id if principal else None,
            endpoint=endpoint or path,
            method=scope.get("method"),
            client=client[0] if client else "-",
            status=status,
        )
        self.metrics.inc(
            "forgeml_requests_total", endpoint=endpoint or "other", model="-", status=str(status)
        )


def _has_media(body: ChatRequest | CompletionRequest) -> bool:
    return isinstance(body, ChatRequest) and any(
        isinstance(m.content, list) and any(p.get("type") in PART_KINDS for p in m.content)
        for m in body.messages
    )


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


def _completion_prompt(prompt: str | list[str] | list[int]) -> tuple[str | None, list[int] | None]:
    """(text, token ids) of a completion request's prompt: one string, or token ids."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        if len(prompt) != 1:
            raise ApiError(400, "prompt: give one prompt per request")
        return prompt[0], None
    if isinstance(prompt, list):
        return None, list(prompt)
    return prompt, None
