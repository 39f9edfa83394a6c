import CvtKit
import Foundation

/// One image-classification request in the format of Hugging Face Inference Endpoints: the raw
/// image bytes (`Content-Type: image/*` or `application/octet-stream`; `top_k` and
/// `function_to_apply` may come as query parameters), or JSON
/// `{"inputs": "<base64 image>", "parameters": {"top_k": 5, "function_to_apply": "softmax"}}`.
public struct ClassificationRequest: Equatable, Sendable {
    public var image: Data
    public var topK: Int
    /// nil: the model's default (transformers' rule from `problem_type` and the label count).
    public var function: ClassificationFunction?

    public init(image: Data, topK: Int = 5, function: ClassificationFunction? = nil) {
        self.image = image; self.topK = topK; self.function = function
    }

    /// The parameters transformers' image-classification pipeline takes (`timeout` is its time limit
    /// for fetching image URLs, which this server never fetches; it is accepted and ignored).
    static let parameterNames: Set<String> = ["top_k", "function_to_apply", "timeout"]

    /// Reads a request body. `contentType` is the header's value (nil when absent: JSON if the body
    /// starts with `{`, raw bytes otherwise); `query` holds the URL's query parameters.
    public static func parse(contentType: String?, body: Data, query: [String: String] = [:]) throws -> ClassificationRequest {
        let mediaType = contentType.map { $0.split(separator: ";", maxSplits: 1).first.map(String.init) ?? $0 }?
            .trimmingCharacters(in: .whitespaces).lowercased() ?? ""
        let isJSON: Bool
        if mediaType.isEmpty {
            isJSON = body.first(where: { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }) == UInt8(ascii: "{")
        } else if mediaType == "application/json" || mediaType.hasSuffix("+json") {
            isJSON = true
        } else if mediaType.hasPrefix("image/") || mediaType == "application/octet-stream" {
            isJSON = false
        } else {
            throw ServeError.badRequest("unsupported_content_type",
                                        "unsupported Content-Type \(contentType ?? ""): send the image bytes as image/* (or application/octet-stream), or JSON {\"inputs\": \"<base64 image>\"} as application/json")
        }
        if isJSON { return try parseJSON(body) }
        guard !body.isEmpty else { throw ServeError.badRequest("invalid_image", "empty request body: send the image bytes") }
        for key in query.keys where !parameterNames.contains(key) {
            throw ServeError.badRequest("invalid_parameters", "unknown query parameter \(key); known: top_k, function_to_apply")
        }
        var request = ClassificationRequest(image: body)
        if let k = query["top_k"] {
            guard let value = Int(k) else { throw ServeError.badRequest("invalid_parameters", "top_k must be an integer, got \(k)") }
            request.topK = try checkedTopK(value)
        }
        if let f = query["function_to_apply"] { request.function = try function(named: f) }
        return request
    }

    static func parseJSON(_ body: Data) throws -> ClassificationRequest {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: body, options: [.fragmentsAllowed])
        } catch {
            throw ServeError.badRequest("invalid_json", "the body is not valid JSON")
        }
        guard let dict = object as? [String: Any] else {
            throw ServeError.badRequest("invalid_json", "the body must be a JSON object {\"inputs\": \"<base64 image>\", \"parameters\": {…}}")
        }
        for key in dict.keys where key != "inputs" && key != "parameters" {
            throw ServeError.badRequest("invalid_json", "unknown key \(key); expected inputs and parameters")
        }
        guard let inputs = dict["inputs"] else { throw ServeError.badRequest("invalid_json", "missing \"inputs\" (the base64-encoded image)") }
        guard let encoded = inputs as? String else {
            throw ServeError.badRequest("invalid_json", "\"inputs\" must be a string holding the base64-encoded image")
        }
        var request = ClassificationRequest(image: try decodeBase64(encoded))
        if let parameters = dict["parameters"], !(parameters is NSNull) {
            guard let p = parameters as? [String: Any] else { throw ServeError.badRequest("invalid_parameters", "\"parameters\" must be an object") }
            for key in p.keys.sorted() where !parameterNames.contains(key) {
                throw ServeError.badRequest("invalid_parameters", "unknown parameter \(key); known: top_k, function_to_apply")
            }
            if let k = p["top_k"], !(k is NSNull) {
                // JSONSerialization's booleans also convert to Int: refuse them first.
                guard !(k is Bool), let value = k as? Int else {
                    throw ServeError.badRequest("invalid_parameters", "top_k must be an integer")
                }
                request.topK = try checkedTopK(value)
            }
            if let f = p["function_to_apply"], !(f is NSNull) {
                guard let name = f as? String else { throw ServeError.badRequest("invalid_parameters", "function_to_apply must be a string") }
                request.function = try function(named: name)
            }
        }
        return request
    }

    /// Base64 as Python's `base64.b64decode` reads what clients send: whitespace ignored, and a
    /// `data:image/…;base64,` prefix accepted. Image URLs are refused: the server fetches nothing.
    static func decodeBase64(_ text: String) throws -> Data {
        var payload = Substring(text)
        if payload.hasPrefix("http://") || payload.hasPrefix("https://") {
            throw ServeError.badRequest("invalid_inputs", "\"inputs\" is a URL; this server does not fetch images: send the base64-encoded image bytes")
        }
        if payload.hasPrefix("data:"), let comma = payload.firstIndex(of: ",") {
            guard payload[..<comma].hasSuffix(";base64") else {
                throw ServeError.badRequest("invalid_base64", "a data: URI in \"inputs\" must be base64 (data:image/…;base64,…)")
            }
            payload = payload[payload.index(after: comma)...]
        }
        var compact = payload.filter { !$0.isWhitespace }
        if compact.isEmpty { throw ServeError.badRequest("invalid_base64", "\"inputs\" is empty: send the base64-encoded image") }
        // Unpadded base64 is common; a remainder of 1 cannot be valid.
        if compact.count % 4 == 2 { compact += "==" } else if compact.count % 4 == 3 { compact += "=" }
        guard let data = Data(base64Encoded: String(compact)) else {
            throw ServeError.badRequest("invalid_base64", "\"inputs\" is not valid base64")
        }
        return data
    }

    static func checkedTopK(_ k: Int) throws -> Int {
        guard k >= 0 else { throw ServeError.badRequest("invalid_parameters", "top_k must be >= 0, got \(k)") }
        return k
    }

    static func function(named name: String) throws -> ClassificationFunction {
        guard let f = ClassificationFunction(caseInsensitive: name) else {
            throw ServeError.badRequest("invalid_parameters", "function_to_apply must be softmax, sigmoid or none, got \(name)")
        }
        return f
    }
}
