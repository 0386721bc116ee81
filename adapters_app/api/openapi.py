"""The OpenAPI 3.1 description of /api/ and /v1/, kept beside the views it describes."""

from mintweb.version import RELEASE

HANDLE = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    ok: str,
    ok_schema: dict | None,
    *,
    body: dict | None = None,
    params: tuple[str, ...] = (),
    errors: tuple[int, ...] = (400, 401, 404),
) -> dict:
    operation = {
        "summary": summary,
        "parameters": [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
        ],
        "responses": {ok: {"description": "OK", **(_json(ok_schema) if ok_schema else {})}},
    }
    for status in errors:
        operation["responses"][str(status)] = {"description": "Error", **_json(_ref("Error"))}
    if body is not None:
        operation["requestBody"] = {"required": True, **body}
    return operation


ADAPTER = ("person", "adapter")


def _list_of(schema: str) -> dict:
    """A keyset page: the rows, and the cursor of the next page (null on the last)."""
    return {
        "type": "object",
        "properties": {
            "data": {"type": "array", "items": _ref(schema)},
            "next_after": {"type": ["string", "integer", "null"]},
        },
    }


def openapi_document(server_url: str) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MinT console API",
            "version": RELEASE,
            "description": "Manage personal adapters (people, adapters, datasets, training jobs, "
            "revisions, the live pointer) and run OpenAI-compatible inference where `model` "
            "is `person/adapter`, `person/adapter@rN`, `person/adapter@<sha256 prefix>` or a base model.",
        },
        "servers": [{"url": server_url.rstrip("/")}],
        "security": [{"bearer": []}],
        "paths": {
            "/api/base-models": {
                "get": _op(
                    "List the registered base models, each with its serving mode and adapter count",
                    "200",
                    {"type": "object", "properties": {"data": {"type": "array", "items": _ref("BaseModel")}}},
                    errors=(401,),
                ),
                "post": _op(
                    "Import a pretrained causal LM as a base (admin role): a HF folder or .gguf file on the "
                    "server (`from`) or a packaged base (`package`). Runs in the request: tens of seconds "
                    "for a real model. 201 when registered, 200 when these weights already are under this "
                    "name (nothing rewritten); 409 when they are under another name or the name is taken.",
                    "201",
                    _ref("BaseModelDetail"),
                    errors=(400, 401, 403, 409),
                    body=_json(
                        {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": HANDLE,
                                "from": {"type": "string", "description": "a path on the server"},
                                "package": {"type": "string", "enum": ["smollm2-135m", "gemma3-270m"]},
                                "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                                "license": {"type": "string"},
                            },
                        }
                    ),
                ),
            },
            "/api/base-models/{name}": {
                "get": _op(
                    "A base model with its folder and size", "200", _ref("BaseModelDetail"), params=("name",)
                )
            },
            "/api/people": {
                "get": _op(
                    "List people (keyset pagination: ?after=<handle>&limit=)",
                    "200",
                    _list_of("Person"),
                ),
                "post": _op(
                    "Create a person",
                    "201",
                    _ref("Person"),
                    errors=(400, 401, 409),
                    body=_json(
                        {
                            "type": "object",
                            "required": ["handle"],
                            "properties": {"handle": HANDLE, "display_name": {"type": "string"}},
                        }
                    ),
                ),
            },
            "/api/people/{person}/erase": {
                "post": _op(
                    "Erase a person: their adapters, revisions, datasets, stored blobs and the study "
                    "runs trained on their data (admin role; an audit tombstone names what was erased)",
                    "200",
                    {
                        "type": "object",
                        "properties": {
                            "erased": {"type": "string"},
                            "adapters": {"type": "integer"},
                            "revisions": {"type": "integer"},
                            "datasets": {"type": "integer"},
                            "study_runs": {"type": "integer"},
                        },
                    },
                    params=("person",),
                    errors=(400, 401, 403, 404),
                    body=_json(
                        {
                            "type": "object",
                            "required": ["reason"],
                            "properties": {"reason": {"type": "string", "minLength": 1}},
                        }
                    ),
                ),
            },
            "/api/people/{person}/adapters": {
                "get": _op(
                    "List a person's adapters (keyset pagination: ?after=<name>&limit=)",
                    "200",
                    _list_of("Adapter"),
                    params=("person",),
                ),
                "post": _op(
                    "Create an adapter bound to a base model",
                    "201",
                    _ref("Adapter"),
                    params=("person",),
                    errors=(400, 401, 404, 409),
                    body=_json(
                        {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": HANDLE,
                                "base": {"type": "string"},
                                "description": {"type": "string"},
                            },
                        }
                    ),
                ),
            },
            "/api/adapters/{person}/{adapter}": {
                "get": _op(
                    "An adapter with its live pointer, revisions and pointer history",
                    "200",
                    _ref("AdapterDetail"),
                    params=ADAPTER,
                ),
            },
            "/api/adapters/{person}/{adapter}/datasets": {
                "get": _op(
                    "List the person's datasets, oldest first (?after=<id>&purpose=train|eval&limit=)",
                    "200",
                    _list_of("Dataset"),
                    params=ADAPTER,
                ),
                "post": _op(
                    "Upload JSONL (chat `messages` or `prompt`/`completion`); ?name=&purpose=train|eval. "
                    "Invalid files get line-numbered errors in error.details and create nothing.",
                    "201",
                    _ref("Dataset"),
                    params=ADAPTER,
                    body={"content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
                ),
            },
            "/api/adapters/{person}/{adapter}/train": {
                "post": _op(
                    "Start a training job",
                    "202",
                    _ref("Job"),
                    params=ADAPTER,
                    body=_json(
                        {
                            "type": "object",
                            "required": ["dataset"],
                            "properties": {
                                "dataset": {"type": ["string", "integer"]},
                                "config": _ref("TrainingConfig"),
                            },
                        }
                    ),
                ),
            },
            "/api/adapters/{person}/{adapter}/evaluate": {
                "post": _op(
                    "Start an evaluation job (a revision, or the bare base when omitted)",
                    "202",
                    _ref("Job"),
                    params=ADAPTER,
                    body=_json(
                        {
                            "type": "object",
                            "required": ["dataset"],
                            "properties": {
                                "dataset": {"type": ["string", "integer"]},
                                "revision": {"type": "string"},
                            },
                        }
                    ),
                ),
            },
            "/api/adapters/{person}/{adapter}/infer": {
                "post": _op(
                    "Generate with a revision (live unless `revision` is given) as a tracked job; "
                    "the text is in the finished job's result",
                    "202",
                    _ref("Job"),
                    params=ADAPTER,
                    body=_json(
                        {
                            "type": "object",
                            "required": ["prompt"],
                            "properties": {
                                "prompt": {"type": "string"},
                                "revision": {"type": "string"},
                                "max_tokens": {"type": "integer", "default": 32},
                            },
                        }
                    ),
                ),
            },
            "/api/adapters/{person}/{adapter}/promote": {
                "post": _op(
                    "Make a revision live. A revision failing its gate is refused (409 gate_failed, "
                    "error.details lists the checks) unless `override_reason` is given (audited).",
                    "200",
                    _ref("PointerEvent"),
                    params=ADAPTER,
                    errors=(400, 401, 404, 409),
                    body=_json(
                        {
                            "type": "object",
                            "required": ["revision"],
                            "properties": {
                                "revision": {"type": "string", "examples": ["r2"]},
                                "reason": {"type": "string"},
                                "override_reason": {"type": "string"},
                            },
                        }
                    ),
                ),
            },
            "/api/adapters/{person}/{adapter}/gate": {
                "get": _op("The promotion gate", "200", _ref("Gate"), params=ADAPTER),
                "post": _op(
                    "Configure the gate: evaluation dataset, thresholds (merged over the defaults), "
                    "auto-promotion after training",
                    "200",
                    _ref("Gate"),
                    params=ADAPTER,
                    body=_json(
                        {
                            "type": "object",
                            "properties": {
                                "eval_dataset": {"type": ["string", "integer"]},
                                "thresholds": {"type": "object", "examples": [{"recall": {"min": 0.8}}]},
                                "auto_promote": {"type": "boolean"},
                            },
                        }
                    ),
                ),
            },
            "/api/adapters/{person}/{adapter}/rollback": {
                "post": _op(
                    "Move live back (to the previous live revision when `to` is omitted)",
                    "200",
                    _ref("PointerEvent"),
                    params=ADAPTER,
                    errors=(400, 401, 404, 409),
                    body=_json(
                        {
                            "type": "object",
                            "properties": {"to": {"type": "string"}, "reason": {"type": "string"}},
                        }
                    ),
                ),
            },
            "/api/jobs": {
                "get": _op(
                    "List jobs newest first (?after=<the last id seen>&adapter=<person/adapter>"
                    "&state=queued|running|succeeded|failed|cancelled&kind=train|evaluate|infer|study&limit=)",
                    "200",
                    _list_of("Job"),
                ),
            },
            "/api/jobs/{job_id}": {
                "get": _op("A job with its progress", "200", _ref("Job"), params=("job_id",))
            },
            "/api/jobs/{job_id}/cancel": {
                "post": _op(
                    "Cancel a queued or running job",
                    "200",
                    _ref("Job"),
                    params=("job_id",),
                    errors=(401, 404, 409),
                ),
            },
            "/api/revisions/{person}/{adapter}/{rev}/download": {
                "get": {
                    **_op("The revision's PEFT folder as .tar.gz", "200", None, params=(*ADAPTER, "rev")),
                    "responses": {
                        "200": {
                            "description": "adapter_model.safetensors + adapter_config.json",
                            "content": {"application/gzip": {}},
                        }
                    },
                },
            },
            "/api/studies": {
                "get": _op(
                    "List footprint studies, newest first (keyset pagination: ?after=<id>&limit=)",
                    "200",
                    {
                        "type": "object",
                        "properties": {
                            "data": {"type": "array", "items": _ref("Study")},
                            "next_after": {"type": ["integer", "null"]},
                        },
                    },
                ),
                "post": _op(
                    "Launch a footprint study: one cell per base x rank x targets x init, each a queued "
                    "`study` job training every person x seed. Invalid fields are named in error.details "
                    "and nothing is written.",
                    "201",
                    _ref("StudyDetail"),
                    errors=(400, 401, 403),
                    body=_json(_ref("StudyRequest")),
                ),
            },
            "/api/studies/{study_id}": {
                "get": _op(
                    "A study's progress, recommendation per base and cells with their reliability",
                    "200",
                    _ref("StudyDetail"),
                    params=("study_id",),
                ),
            },
            "/api/studies/{study_id}/cancel": {
                "post": _op(
                    "Cancel every queued or running cell (recorded runs are kept)",
                    "200",
                    _ref("StudyDetail"),
                    params=("study_id",),
                    errors=(401, 403, 404, 409),
                ),
            },
            "/api/studies/{study_id}/resume": {
                "post": _op(
                    "Queue a new job for every failed, cancelled or pending cell; recorded runs are skipped",
                    "202",
                    _ref("StudyDetail"),
                    params=("study_id",),
                    errors=(401, 403, 404, 409),
                ),
            },
            "/api/studies/{study_id}/results": {
                "get": {
                    **_op(
                        "Every recorded run: JSON with the study and its cells, or ?format=csv streamed",
                        "200",
                        None,
                        params=("study_id",),
                    ),
                    "responses": {
                        "200": {
                            "description": "study, cells and runs; or one CSV line per run",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "study": {"type": "object"},
                                            "cells": {"type": "array", "items": _ref("StudyCell")},
                                            "runs": {"type": "array", "items": {"type": "object"}},
                                        },
                                    }
                                },
                                "text/csv": {"schema": {"type": "string"}},
                            },
                        },
                        "400": {"description": "Error", **_json(_ref("Error"))},
                        "401": {"description": "Error", **_json(_ref("Error"))},
                        "404": {"description": "Error", **_json(_ref("Error"))},
                    },
                },
            },
            "/v1/models": {
                "get": _op("OpenAI-compatible model list", "200", {"type": "object"}, errors=(401,))
            },
            "/v1/completions": {
                "post": _op(
                    "OpenAI-compatible completion", "200", {"type": "object"}, body=_json({"type": "object"})
                )
            },
            "/v1/chat/completions": {
                "post": _op(
                    "OpenAI-compatible chat completion",
                    "200",
                    {"type": "object"},
                    body=_json({"type": "object"}),
                )
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "python manage.py create_api_key <username>",
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "details": {},
                            },
                        }
                    },
                },
                "BaseModel": {
                    "type": "object",
                    "properties": {
                        "name": HANDLE,
                        "digest": {"type": "string", "description": "sha256 over the weight files"},
                        "parameters": {"type": "integer"},
                        "architecture": {"type": "string", "examples": ["LlamaForCausalLM"]},
                        "context_length": {"type": ["integer", "null"]},
                        "license": {"type": "string"},
                        "source": {"type": "string"},
                        "serving_mode": {"type": "string", "enum": ["batched", "one adapter at a time"]},
                        "adapters": {"type": "integer"},
                        "created_at": {"type": "string"},
                    },
                },
                "BaseModelDetail": {
                    "allOf": [
                        _ref("BaseModel"),
                        {
                            "type": "object",
                            "properties": {
                                "serving_reason": {"type": "string"},
                                "path": {"type": "string"},
                                "bytes_on_disk": {"type": ["integer", "null"]},
                            },
                        },
                    ]
                },
                "Person": {
                    "type": "object",
                    "properties": {
                        "handle": HANDLE,
                        "display_name": {"type": "string"},
                        "created_at": {"type": "string"},
                    },
                },
                "Adapter": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "examples": ["alice/assistant"]},
                        "person": HANDLE,
                        "name": HANDLE,
                        "base": {"type": "string"},
                        "base_digest": {"type": "string"},
                        "live": {"type": ["string", "null"]},
                    },
                },
                "AdapterDetail": {
                    "allOf": [
                        _ref("Adapter"),
                        {
                            "type": "object",
                            "properties": {
                                "revisions": {"type": "array", "items": _ref("Revision")},
                                "pointer_history": {"type": "array", "items": _ref("PointerEvent")},
                            },
                        },
                    ]
                },
                "Revision": {
                    "type": "object",
                    "properties": {
                        "label": {"type": "string"},
                        "sha256": {"type": "string"},
                        "rank": {"type": "integer"},
                        "size_bytes": {"type": "integer"},
                        "parent": {"type": ["string", "null"]},
                        "provenance": {"type": "object"},
                    },
                },
                "PointerEvent": {
                    "type": "object",
                    "properties": {
                        "action": {"type": "string", "enum": ["promote", "rollback"]},
                        "from": {"type": ["string", "null"]},
                        "to": {"type": "string"},
                        "actor": {"type": "string"},
                        "reason": {"type": "string"},
                        "at": {"type": "string"},
                    },
                },
                "Gate": {
                    "type": "object",
                    "properties": {
                        "eval_dataset": {"type": ["integer", "null"]},
                        "thresholds": {"type": "object"},
                        "auto_promote": {"type": "boolean"},
                    },
                },
                "Dataset": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "sha256": {"type": "string"},
                        "rows": {"type": "integer"},
                        "format": {"type": "string", "enum": ["chat", "completion", "preference"]},
                    },
                },
                "TrainingConfig": {
                    "type": "object",
                    "properties": {
                        "rank": {"type": "integer", "default": 8},
                        "alpha": {"type": "integer", "default": 16},
                        "targets": {"type": "string", "enum": ["all-linear", "attention"]},
                        "learning_rate": {"type": "number"},
                        "steps": {"type": "integer"},
                        "batch_size": {"type": "integer"},
                        "seed": {"type": "integer"},
                        "init": {"type": "string", "enum": ["default", "gaussian"]},
                    },
                },
                "StudyRequest": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "maxLength": 100},
                        "bases": {"type": "array", "items": {"type": "string"}},
                        "ranks": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 64}},
                        "targets": {"type": "array", "items": {"enum": ["all-linear", "attention"]}},
                        "inits": {"type": "array", "items": {"enum": ["default", "pissa", "olora", "tail"]}},
                        "seeds": {
                            "oneOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}],
                            "description": "a count (seeds 0..n-1) or a list of seeds",
                        },
                        "people": {"type": "integer", "minimum": 2, "description": "generated people"},
                        "world_seed": {"type": "integer", "minimum": 0},
                        "adapters": {
                            "type": "array",
                            "items": {"type": "string"},
                            "minItems": 2,
                            "maxItems": 100,
                            "description": "instead of people and world_seed: a cohort of fleet adapters "
                            '("person/adapter"); each trains on the data behind its live revision (its '
                            "person's newest training set if untrained), is graded on its gate's "
                            "evaluation set and judged by its gate's thresholds, all pinned (the data "
                            "by sha256) when the study is made",
                        },
                        "training": {
                            "type": "object",
                            "description": "steps, learning_rate, batch_size, replay, max_length, dropout",
                        },
                        "reliability_target": {"type": "number", "default": 0.95},
                    },
                },
                "Study": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "name": {"type": "string"},
                        "state": {
                            "type": "string",
                            "enum": ["pending", "running", "finished", "failed", "cancelled"],
                        },
                        "grid": {"type": "object"},
                        "cohort": {"type": "object"},
                        "reliability_target": {"type": "number"},
                        "runs_done": {"type": "integer"},
                        "runs_total": {"type": "integer"},
                        "created_by": {"type": "string"},
                        "created_at": {"type": "string"},
                    },
                },
                "StudyCell": {
                    "type": "object",
                    "properties": {
                        "base": {"type": "string"},
                        "rank": {"type": "integer"},
                        "targets": {"type": "string"},
                        "init": {"type": "string"},
                        "state": {
                            "type": "string",
                            "enum": ["pending", "queued", "running", "done", "failed", "cancelled"],
                        },
                        "runs_done": {"type": "integer"},
                        "runs_total": {"type": "integer"},
                        "payload_bytes": {"type": ["integer", "null"]},
                        "stored_parameters": {"type": ["integer", "null"]},
                        "reliability": {"type": "object"},
                        "job": {"type": ["integer", "null"]},
                    },
                },
                "StudyDetail": {
                    "type": "object",
                    "properties": {
                        "study": {
                            "allOf": [
                                _ref("Study"),
                                {
                                    "type": "object",
                                    "properties": {
                                        "training": {"type": "object"},
                                        "alpha_per_rank": {"type": "integer"},
                                        "cells": {"type": "object", "description": "cell state -> count"},
                                        "recommendations": {"type": "array", "items": {"type": "object"}},
                                    },
                                },
                            ]
                        },
                        "cells": {"type": "array", "items": _ref("StudyCell")},
                    },
                },
                "Job": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "kind": {"type": "string"},
                        "state": {
                            "type": "string",
                            "enum": ["queued", "running", "succeeded", "failed", "cancelled"],
                        },
                        "progress": {"type": "object"},
                        "error": {"type": "string"},
                        "result_revision": {"type": ["string", "null"]},
                    },
                },
            },
        },
    }
