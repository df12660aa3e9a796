"""Deterministic "generation" and the OpenAI-compatible response shapes of each engine.

Shapes follow sglang/srt/entrypoints/openai/protocol.py (0.5.23) and
vllm/entrypoints/openai/{chat_completion,completion}/protocol.py (0.33.0).
"""
import base64
import binascii
import hashlib
import time
import uuid

ANSWER_TOKENS = 24  # a natural answer ends with finish_reason "stop" after this many tokens
_WORDS = ("stand-in", "engine", "says", "hello", "from", "a", "test", "double", "that", "never",
          "touches", "a", "GPU", "and", "answers", "the", "same", "way", "every", "time")


class RequestError(Exception):
    def __init__(self, status, message, err_type, param=None):
        super().__init__(message)
        self.status, self.message, self.err_type, self.param = status, message, err_type, param


def error_body(engine, err):
    if engine == "vllm":  # serve/engine/protocol.py ErrorResponse{error: ErrorInfo}
        return {"error": {"message": err.message, "type": err.err_type, "param": err.param, "code": err.status}}
    # sglang openai/protocol.py ErrorResponse (flat)
    return {"object": "error", "message": err.message, "type": err.err_type, "param": err.param, "code": err.status}


def bad_request(engine, message):
    return RequestError(400, message, "BadRequestError" if engine == "vllm" else "Bad Request")


def _text_of(content):
    if isinstance(content, list):  # multimodal parts: only text counts here
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"RIFF")


def _check_image_url(engine, part):
    """An image_url part as the engines take it: {"type": "image_url", "image_url": {"url": ...}} with a
    base64 data URL of an image (vllm/multimodal/media/connector.py _load_data_url; the stand-in is
    offline, so it fetches no http(s) URL)."""
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else None
    if not isinstance(url, str):  # both engines' pydantic models: image_url.url is a required string
        raise bad_request(engine, "messages: an image_url part needs image_url.url (a string)")
    if url[:5].lower() != "data:":
        raise bad_request(engine, "the stand-in is offline: send images as base64 data URLs")
    spec, sep, data = url[5:].partition(",")
    if not sep:
        raise bad_request(engine, f"Invalid data URL {url[:32]!r}: missing ',' separator.")
    if spec.rpartition(";")[2] != "base64":
        raise bad_request(engine, "Only base64 data URLs are supported for now.")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(engine, "Failed to load image: invalid base64 data") from None
    if not raw.startswith(IMAGE_MAGIC):
        raise bad_request(engine, "Failed to load image: cannot identify image file")


def check_content_parts(engine, body, multimodal):
    """Refuse malformed content parts the way the engines do (400): unknown part types, a text part
    without text, an image part that is not an image, and any image for a text-only model."""
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise bad_request(engine, "messages: a text part needs a text string")
            elif kind == "image_url":
                if not multimodal:  # vllm/multimodal/registry.py; SGLang has no image processor for it
                    raise bad_request(engine, "the served model is not a multimodal model")
                _check_image_url(engine, part)
            else:
                raise bad_request(engine, f"messages: unknown content part type {kind!r}")


def prompt_of(kind, body, engine):
    """Return (prompt text, prompt token count) of a chat or completion request."""
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request(engine, "'messages' must be a non-empty list")
        text = "\n".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
        return text, len(text.split()) + 4 * len(messages)  # role/template tokens
    prompt = body.get("prompt", body.get("text"))
    if prompt is None:
        raise bad_request(engine, "'prompt' is required")
    text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
    return text, max(1, len(text.split()))


def answer_tokens(prompt, max_tokens):
    """Tokens of the canned answer (seeded by the prompt) and the finish reason."""
    seed = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest(), 16)
    tokens = [(" " if i else "") + _WORDS[(seed + i * 7) % len(_WORDS)] for i in range(ANSWER_TOKENS)]
    if max_tokens is not None and max_tokens < ANSWER_TOKENS:
        return tokens[:max(0, max_tokens)], "length"
    return tokens, "stop"


def new_id(engine, kind):
    if engine == "vllm":
        return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
    return uuid.uuid4().hex


def usage(engine, prompt_tokens, completion_tokens):
    body = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens, "prompt_tokens_details": None}
    if engine == "sglang":
        body["reasoning_tokens"] = 0
    return body


def _choice(engine, kind, text, finish_reason, delta=None):
    choice = {"index": 0}
    if kind == "chat" and delta is not None:
        choice["delta"] = delta
    elif kind == "chat":
        message = {"role": "assistant", "content": text}
        if engine == "vllm":
            message.update(refusal=None, annotations=None, audio=None, function_call=None, reasoning=None)
        else:
            message["reasoning_content"] = None
        choice["message"] = message
    else:
        choice["text"] = text
    choice["logprobs"] = None
    choice["finish_reason"] = finish_reason
    if engine == "vllm":
        choice["stop_reason"] = None
    else:
        choice["matched_stop"] = None
    return choice


def _envelope(kind, rid, model, created, stream):
    obj = {"chat": "chat.completion", "completion": "text_completion"}[kind]
    if stream and kind == "chat":
        obj += ".chunk"
    return {"id": rid, "object": obj, "created": created, "model": model}


def full_response(engine, kind, rid, model, text, finish_reason, prompt_tokens, completion_tokens):
    body = _envelope(kind, rid, model, int(time.time()), stream=False)
    body["choices"] = [_choice(engine, kind, text, finish_reason)]
    body["usage"] = usage(engine, prompt_tokens, completion_tokens)
    if engine == "vllm":
        body.update(service_tier=None, system_fingerprint=None, prompt_logprobs=None, kv_transfer_params=None)
    else:
        body["metadata"] = None
    return body


def stream_chunk(engine, kind, rid, model, created, text=None, finish_reason=None, role=False):
    """One SSE chunk. `role=True` is the opening chat chunk ({"role": "assistant", "content": ""})."""
    body = _envelope(kind, rid, model, created, stream=True)
    delta = None
    if kind == "chat":
        delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
    body["choices"] = [_choice(engine, kind, text or "", finish_reason, delta=delta)]
    body["usage"] = None
    return body


def usage_chunk(engine, kind, rid, model, created, prompt_tokens, completion_tokens):
    """Sent before [DONE] when the request asks for stream_options.include_usage."""
    body = _envelope(kind, rid, model, created, stream=True)
    body["choices"] = []
    body["usage"] = usage(engine, prompt_tokens, completion_tokens)
    return body


def model_list(engine, names, root, max_model_len):
    cards = []
    for name in names:
        card = {"id": name, "object": "model", "created": int(time.time()), "owned_by": engine,
                "root": root if engine == "vllm" else name, "parent": None, "max_model_len": max_model_len}
        if engine == "vllm":
            card["permission"] = [{
                "id": "modelperm-" + uuid.uuid4().hex, "object": "model_permission",
                "created": int(time.time()), "allow_create_engine": False, "allow_sampling": True,
                "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                "allow_fine_tuning": False, "organization": "*", "group": None, "is_blocking": False}]
        cards.append(card)
    return {"object": "list", "data": cards}
