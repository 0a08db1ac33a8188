//! The OpenAPI 3.1 document of the server, served at /openapi.json: every route with every answer
//! it is designed to give (each with its schema), so that a client generator, or schemathesis
//! (`scripts/fuzz-api.sh`), can check the server against it.

use serde_json::{json, Value};

/// An answer with a JSON body of `schema`.
fn json_answer(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// An error answer (`{"error": {...}}`), with Retry-After where `retry` says so.
fn error(description: &str, retry: bool) -> Value {
    let mut r = json_answer(description, json!({"$ref": "#/components/schemas/Error"}));
    if retry {
        r["headers"] = json!({"Retry-After": {"description": "Seconds to wait before retrying",
            "schema": {"type": "integer"}}});
    }
    r
}

/// The answers every route may give besides its own: a missing or wrong API key.
fn guarded(mut responses: Value) -> Value {
    responses["401"] = error(
        "An API key is set and the request lacks it (Authorization: Bearer KEY)",
        false,
    );
    responses
}

/// The answers of a generating (POST) route besides `200`.
fn generating(ok: Value) -> Value {
    guarded(json!({
        "200": ok,
        "400": error("The request is malformed or does not fit this server's limits (the message says which)", false),
        "403": error("The Host is not this server's, or a browser page of another origin sent the request", false),
        "408": error("The body did not arrive within --body-timeout", false),
        "413": error("The body is larger than --max-body-mib", false),
        "429": error("The model's queue is full, or every upload slot is taken; see Retry-After", true),
        "500": error("The model failed on this request; the log has the details under the request id", false),
        "503": error("The request's deadline (--timeout) passed; see Retry-After", true),
    }))
}

/// One server-sent event (its `data` is JSON, or `[DONE]` at the end of a chat stream).
fn event(names: Value) -> Value {
    json!({"type": "object", "required": ["data"], "properties": {"event": names,
        "data": {"type": "string", "contentMediaType": "application/json"}}})
}

/// The OpenAPI 3.1 description of the routes.
pub fn openapi_document() -> Value {
    let text_answer = json!({
        "description": "The answer (JSON), or server-sent events when `stream` is true: `token` events {\"delta\"}, then `done` {\"text\", \"finish_reason\", \"usage\"} or `error` {\"message\", \"request_id\"}.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/TextAnswer"}},
            "text/event-stream": {"schema": event(json!({"enum": ["token", "done", "error"]}))}
        }
    });
    let options = json!({
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 10, "description": "0 = greedy"},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": 0},
        "seed": {"type": "integer", "minimum": 0},
        "stream": {"type": "boolean"}
    });
    let form = |extra: Value, required: &[&str]| {
        let mut props = options.clone();
        props["image"] = json!({"type": "string", "format": "binary", "description": "A CXR: DICOM, PNG or JPEG"});
        if let (Some(p), Some(e)) = (props.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        json!({"required": true, "content": {"multipart/form-data": {"schema": {"type": "object", "required": required, "properties": props}}}})
    };
    let health = json_answer(
        "The server's state",
        json!({"$ref": "#/components/schemas/Health"}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "llm-cxr", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Read and draw chest X-rays with an instruction-finetuned language model. Every answer carries an `x-request-id` header; error bodies repeat it."},
        "security": [{"bearer": []}, {}],
        "paths": {
            "/health": {"get": {"summary": "Whether the model can serve, and the queue's length (no API key needed)", "security": [],
                "responses": {"200": health.clone(), "503": {"description": "Degraded: the model worker is gone or keeps failing (`reason` says which)",
                    "content": health["content"].clone()}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": guarded(json!({"200": {"description": "Prometheus text format 0.0.4",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}))}},
            "/openapi.json": {"get": {"summary": "This document", "responses": guarded(json!({"200": json_answer("OpenAPI 3.1", json!({"type": "object"}))}))}},
            "/v1/examples": {"get": {"summary": "Phantom CXRs with their reports, to try the model on",
                "responses": guarded(json!({"200": json_answer("The examples", json!({"$ref": "#/components/schemas/Examples"}))}))}},
            "/v1/report": {"post": {"summary": "CXR -> report", "requestBody": form(json!({}), &["image"]), "responses": generating(text_answer.clone())}},
            "/v1/ask": {"post": {"summary": "A question about a CXR (VQA)", "requestBody": form(json!({"question": {"type": "string"}}), &["image", "question"]), "responses": generating(text_answer)}},
            "/v1/draw": {"post": {"summary": "Report -> CXR (exactly one image's codes, decoded by the VQ-GAN)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["report"],
                    "properties": {"report": {"type": "string", "minLength": 1, "pattern": "\\S"}, "temperature": options["temperature"], "top_p": options["top_p"], "top_k": options["top_k"], "seed": options["seed"]}}}}},
                "responses": generating(json_answer("The drawing", json!({"$ref": "#/components/schemas/Drawing"})))}},
            "/v1/chat/completions": {"post": {"summary": "OpenAI-compatible chat completion (text); server-sent chunks when `stream` is true, ending with `data: [DONE]`. One choice per request: `n` must be 1.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["messages"],
                    "properties": {"model": {"type": "string"}, "messages": {"type": "array", "items": {"type": "object", "required": ["role", "content"],
                        "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": {"type": "string"}}}},
                        "max_tokens": options["max_tokens"], "temperature": options["temperature"], "top_p": options["top_p"], "seed": options["seed"],
                        "n": {"type": "integer", "minimum": 1, "maximum": 1}, "stream": options["stream"]}}}}},
                "responses": generating(json!({"description": "A chat.completion object, or chat.completion.chunk events",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
                                "text/event-stream": {"schema": event(json!({"const": "message"}))}}}))}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "Only when the server runs with --api-key"}},
            "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["message", "type"],
                "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "request_id": {"type": "string"}}}}},
            "Health": {"type": "object", "required": ["status"], "properties": {"status": {"enum": ["ok", "degraded"]}, "reason": {"type": "string"},
                "model": {"type": "string"}, "queued": {"type": "integer"}, "uptime_s": {"type": "integer"}}},
            "Examples": {"type": "object", "required": ["examples"], "properties": {"examples": {"type": "array", "items": {"type": "object",
                "properties": {"png_base64": {"type": "string"}, "report": {"type": "string"}}}}}},
            "TextAnswer": {"type": "object", "required": ["text", "finish_reason", "usage"], "properties": {"text": {"type": "string"}, "finish_reason": {"enum": ["stop", "length"]},
                "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}}}, "seconds": {"type": "number"}}},
            "Drawing": {"type": "object", "required": ["png_base64", "codes", "grid"], "properties": {"png_base64": {"type": "string"}, "codes": {"type": "array", "items": {"type": "integer"}}, "grid": {"type": "integer"}, "seconds": {"type": "number"}}},
            "ChatCompletion": {"type": "object", "required": ["id", "object", "choices", "usage"], "properties": {
                "id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"}, "model": {"type": "string"},
                "choices": {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "object", "properties": {"index": {"type": "integer"},
                    "message": {"type": "object", "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}}},
                    "finish_reason": {"enum": ["stop", "length"]}}}},
                "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}}}}
        }}
    })
}

/// The document as this server's flags make it: `max_tokens` bounded by `--max-tokens`.
pub fn served_document(max_tokens: usize) -> Value {
    let mut doc = openapi_document();
    for (route, media) in [
        ("/v1/report", "multipart/form-data"),
        ("/v1/ask", "multipart/form-data"),
        ("/v1/chat/completions", "application/json"),
    ] {
        let p = &mut doc["paths"][route]["post"]["requestBody"]["content"][media]["schema"]
            ["properties"]["max_tokens"];
        if p.is_object() {
            p["maximum"] = max_tokens.into();
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_served_document_bounds_max_tokens() {
        let doc = super::served_document(8);
        let chat = &doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"]["properties"]["max_tokens"];
        assert_eq!(chat["maximum"], 8);
        let report = &doc["paths"]["/v1/report"]["post"]["requestBody"]["content"]
            ["multipart/form-data"]["schema"]["properties"]["max_tokens"];
        assert_eq!(report["maximum"], 8);
    }
}
