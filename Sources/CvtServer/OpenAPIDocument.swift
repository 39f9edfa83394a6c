import Foundation

/// The OpenAPI 3.1 document served at `/openapi.json`: every route, its request bodies and answers.
enum OpenAPIDocument {
    /// Every route the server has, as (method, OpenAPI path).
    static let routes: [(method: String, path: String)] = [
        ("post", "/"), ("post", "/models/{name}"), ("get", "/models"), ("get", "/health"), ("get", "/ready"),
        ("get", "/metrics"), ("get", "/openapi.json"),
    ]

    /// The methods a path has (for 405's Allow header), nil for no route.
    static func methods(forPath path: String) -> String? {
        var pattern = path
        if path.hasPrefix("/models/"), path.dropFirst("/models/".count).split(separator: "/", omittingEmptySubsequences: false).count == 1 {
            pattern = "/models/{name}"
        }
        let methods = routes.filter { $0.path == pattern }.map { $0.method.uppercased() }
        return methods.isEmpty ? nil : methods.joined(separator: ", ")
    }

    static func json(modelNames: [String]) -> Data {
        let object = document(modelNames: modelNames)
        return (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    }

    static func document(modelNames: [String]) -> [String: Any] {
        func ref(_ name: String) -> [String: Any] { ["$ref": "#/components/schemas/\(name)"] }
        func json(_ schema: [String: Any], _ description: String) -> [String: Any] {
            ["description": description, "content": ["application/json": ["schema": schema]]]
        }
        let error = ref("Error")
        let retryAfter: [String: Any] = ["Retry-After": ["description": "Seconds to wait before retrying", "schema": ["type": "integer"]]]
        var classifyResponses: [String: Any] = [
            "200": json(ref("Predictions"), "Ranked labels, best first (transformers' image-classification pipeline output)"),
            "400": json(error, "Bad input: wrong Content-Type, broken JSON or base64, unknown parameters, or an image that is corrupt, not JPEG/PNG, or larger (width × height) than the server decodes"),
            "404": json(error, "No model of that name"),
            "408": json(error, "The request body did not arrive in time"),
            "413": json(error, "The request body is larger than the server accepts"),
            "500": json(error, "The model failed"),
        ]
        var unavailable = json(error, "The queue is full, or the model is still loading; retry after Retry-After seconds")
        unavailable["headers"] = retryAfter
        classifyResponses["503"] = unavailable
        let queryParameters: [[String: Any]] = [
            ["name": "top_k", "in": "query", "required": false, "description": "Labels to return, for raw image bodies (JSON bodies use parameters.top_k)",
             "schema": ["type": "integer", "minimum": 0, "default": 5]],
            ["name": "function_to_apply", "in": "query", "required": false, "description": "Score function, for raw image bodies",
             "schema": ["type": "string", "enum": ["softmax", "sigmoid", "none"]]],
        ]
        let classifyBody: [String: Any] = [
            "required": true,
            "content": [
                "image/*": ["schema": ["type": "string", "format": "binary"]],
                "application/octet-stream": ["schema": ["type": "string", "format": "binary"]],
                "application/json": ["schema": ref("ClassificationRequest")],
            ],
        ]
        func classify(_ summary: String, extraParameters: [[String: Any]] = []) -> [String: Any] {
            ["summary": summary, "parameters": extraParameters + queryParameters, "requestBody": classifyBody, "responses": classifyResponses]
        }
        var nameSchema: [String: Any] = ["type": "string", "pattern": "^[A-Za-z0-9._-]+$"]
        if !modelNames.isEmpty { nameSchema["enum"] = modelNames }
        let paths: [String: Any] = [
            "/": ["post": classify("Classify an image with the default model (the first one served)")],
            "/models/{name}": ["post": classify("Classify an image with the named model",
                                                extraParameters: [["name": "name", "in": "path", "required": true, "schema": nameSchema]])],
            "/models": ["get": ["summary": "The served models", "responses": ["200": json(ref("Models"), "Models, their labels once loaded")]]],
            "/health": ["get": ["summary": "Liveness: the process answers", "responses": ["200": json(ref("Status"), "Alive")]]],
            "/ready": ["get": ["summary": "Readiness: every model has loaded",
                               "responses": ["200": json(ref("Status"), "Ready"), "503": json(ref("Status"), "Still loading")]]],
            "/metrics": ["get": ["summary": "Prometheus metrics (text exposition format)",
                                 "responses": ["200": ["description": "Metrics", "content": ["text/plain": ["schema": ["type": "string"]]]]]]],
            "/openapi.json": ["get": ["summary": "This document",
                                      "responses": ["200": ["description": "OpenAPI 3.1 document", "content": ["application/json": ["schema": ["type": "object"]]]]]]],
        ]
        let schemas: [String: Any] = [
            "ClassificationRequest": [
                "type": "object", "required": ["inputs"], "additionalProperties": false,
                "properties": [
                    "inputs": ["type": "string", "minLength": 1, "contentEncoding": "base64", "contentMediaType": "image/*",
                               "description": "The image (JPEG or PNG) in base64; a data:image/…;base64, URI is accepted"],
                    "parameters": [
                        "type": "object", "additionalProperties": false,
                        "properties": [
                            "top_k": ["type": "integer", "minimum": 0, "default": 5, "description": "Labels to return (clipped to the label count)"],
                            "function_to_apply": ["type": "string", "enum": ["softmax", "sigmoid", "none"],
                                                  "description": "Default: from the model's problem_type and label count, as transformers"],
                            "timeout": ["type": "number", "description": "Accepted for compatibility and ignored (no URLs are fetched)"],
                        ],
                    ],
                ],
            ],
            "Predictions": [
                "type": "array",
                "items": ["type": "object", "required": ["label", "score"],
                          "properties": ["label": ["type": "string"], "score": ["type": "number"]]],
            ],
            "Error": [
                "type": "object", "required": ["error", "error_type"],
                "properties": ["error": ["type": "string"], "error_type": ["type": "string"]],
            ],
            "Status": [
                "type": "object", "required": ["status"],
                "properties": ["status": ["type": "string"], "models": ["type": "array", "items": ["type": "string"]]],
            ],
            "Models": [
                "type": "object",
                "properties": ["models": ["type": "array", "items": [
                    "type": "object",
                    "properties": ["name": ["type": "string"], "default": ["type": "boolean"], "loaded": ["type": "boolean"],
                                   "labels": ["type": "array", "items": ["type": "string"]]],
                ]]],
            ],
        ]
        return [
            "openapi": "3.1.0",
            "info": ["title": "cvt serve", "version": "1.0.0",
                     "description": "CvT image classification in the request format of Hugging Face Inference Endpoints"],
            "paths": paths,
            "components": ["schemas": schemas],
        ]
    }
}
