"""Structured-output workloads whose schema is not in the prompt: the grammar alone knows the keys, the enum
values and the tool names, as in an agent's tool calls or a pipeline's extraction step.

Each workload turns the dev set's requests (the first turn of every Spec-Bench dev prompt) into a prompt and a
JSON schema:

- ``tool-call``: the model picks one of five tools and fills its typed arguments; the prompt says only that a tool
  is to be called, never which tools exist or what they take;
- ``extraction``: a nested record about the request (category, language and difficulty enums, a list of entities
  with an enum kind, a flag, a short summary);
- ``plan``: a list of step objects (number, title, detail, minutes).

String fields carry a ``maxLength`` so that a base model that rambles inside a string still reaches the grammar's
next key within the token budget.
"""
from __future__ import annotations

from dataclasses import replace

from .prompts import BenchPrompt

TOOLS = {
    "get_weather": {"city": {"type": "string", "maxLength": 40},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 14}},
    "search_web": {"query": {"type": "string", "maxLength": 80},
                   "max_results": {"type": "integer", "minimum": 1, "maximum": 20},
                   "safe_search": {"type": "boolean"}},
    "create_event": {"title": {"type": "string", "maxLength": 60},
                     "date": {"type": "string", "pattern": "^2026-[01][0-9]-[0-3][0-9]$"},
                     "attendees": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 4},
                     "priority": {"enum": ["low", "normal", "high"]}},
    "run_python": {"code": {"type": "string", "maxLength": 200},
                   "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 60}},
    "translate_text": {"text": {"type": "string", "maxLength": 120},
                       "target_language": {"enum": ["english", "french", "german", "spanish", "chinese",
                                                    "japanese"]}},
}

TOOL_CALL_SCHEMA = {
    "anyOf": [
        {"type": "object", "additionalProperties": False, "required": ["tool", "arguments"],
         "properties": {"tool": {"const": name},
                        "arguments": {"type": "object", "additionalProperties": False, "required": list(args),
                                      "properties": args}}}
        for name, args in TOOLS.items()
    ]
}

EXTRACTION_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["category", "language", "difficulty", "entities", "needs_code", "summary"],
    "properties": {
        "category": {"enum": ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
                              "humanities", "other"]},
        "language": {"enum": ["english", "french", "german", "spanish", "chinese", "other"]},
        "difficulty": {"enum": ["easy", "medium", "hard"]},
        "entities": {"type": "array", "maxItems": 3, "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "kind"],
            "properties": {"name": {"type": "string", "maxLength": 40},
                           "kind": {"enum": ["person", "place", "organization", "product", "concept",
                                             "other"]}}}},
        "needs_code": {"type": "boolean"},
        "summary": {"type": "string", "maxLength": 100},
    },
}

PLAN_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["steps"],
    "properties": {"steps": {"type": "array", "minItems": 2, "maxItems": 4, "items": {
        "type": "object", "additionalProperties": False, "required": ["step", "title", "detail", "minutes"],
        "properties": {"step": {"type": "integer", "minimum": 1, "maximum": 9},
                       "title": {"type": "string", "maxLength": 40},
                       "detail": {"type": "string", "maxLength": 80},
                       "minutes": {"type": "integer", "minimum": 1, "maximum": 120}}}}},
}

WORKLOADS = {
    "tool-call": ("You are an assistant that acts by calling tools. Call exactly one tool that helps with the "
                  "request below, and reply with the call as a JSON object only.", TOOL_CALL_SCHEMA),
    "extraction": ("Describe the request below as a JSON record: what kind of task it is, its language and "
                   "difficulty, the entities it names, whether answering needs code, and a one-line summary.",
                   EXTRACTION_SCHEMA),
    "plan": ("Plan how you would answer the request below, as a short JSON list of steps.", PLAN_SCHEMA),
}


def structured_prompts(requests: list[BenchPrompt], workloads: list[str] | None = None) -> list[BenchPrompt]:
    """Every request under every workload (``workloads``: names from ``WORKLOADS``, default all), as bench
    prompts whose ``category`` is the workload and whose ``grammar_spec`` is its schema; the request's own
    category is kept in the prompt id. Workloads interleave, so a cut with ``limit`` keeps all of them."""
    names = list(WORKLOADS) if workloads is None else list(workloads)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown structured workloads {unknown}; known: {', '.join(WORKLOADS)}")
    out = []
    for request in requests:
        for name in names:
            instruction, schema = WORKLOADS[name]
            out.append(replace(request, question_id=f"{request.question_id}/{request.category}", category=name,
                               text=f"{instruction}\n\nRequest: {request.text}\n\nJSON:",
                               grammar_spec={"json_schema": schema}))
    return out
