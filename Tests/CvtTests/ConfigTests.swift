import Cvt
import CvtNN
import CvtTensor
import Foundation
import XCTest

final class ConfigTests: XCTestCase {
    func decode(_ json: String) throws -> CvtConfig { try CvtConfig.decode(Data(json.utf8)) }

    func expectError(_ json: String, field: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try decode(json), file: file, line: line) { error in
            guard let e = error as? CvtConfigError else { return XCTFail("\(error) is not a CvtConfigError", file: file, line: line) }
            XCTAssertEqual(e.field, field, "\(e)", file: file, line: line)
            XCTAssertTrue(e.description.contains(field), file: file, line: line)
        }
    }

    func testHubStyleConfigWithExtraKeys() throws {
        let c = try decode("""
        {"architectures": ["CvtForImageClassification"], "torch_dtype": "float32", "mlp_ratios": [2, 2, 2, 2],
         "model_type": "cvt", "embed_dim": [64, 192, 384], "num_heads": [1, 3, 6], "depth": [1, 4, 16],
         "id2label": {"0": "tench", "1": "goldfish", "2": "great white shark"}, "label2id": {"tench": 0},
         "layer_norm_eps": 1e-12, "some_future_key": {"nested": true}}
        """)
        XCTAssertEqual(c.depth, [1, 4, 16])
        XCTAssertEqual(c.numLabels, 3)
        XCTAssertEqual(c.id2label[2], "great white shark")
        XCTAssertEqual(c.mlpRatio, [4, 4, 4], "mlp_ratios is not the real key and must not change mlp_ratio")
        XCTAssertEqual(c.patchSizes, [7, 3, 3], "missing keys take the cvt-13 defaults")
        XCTAssertNil(c.problemType)
    }

    func testDefaultsAndNumLabels() throws {
        let c = try decode("{}")
        var defaults = CvtConfig()
        defaults.architectures = nil
        XCTAssertEqual(c, defaults)
        XCTAssertEqual(c.numLabels, 2)
        XCTAssertEqual(c.id2label, [0: "LABEL_0", 1: "LABEL_1"])
        let d = try decode(#"{"num_labels": 5}"#)
        XCTAssertEqual(d.numLabels, 5)
        XCTAssertEqual(d.id2label[4], "LABEL_4")
        XCTAssertEqual(try decode(#"{"id2label": {}}"#).numLabels, 0)
    }

    func testRoundTripWritesTransformersKeys() throws {
        var c = CvtConfig.cvt13
        c.problemType = "multi_label_classification"
        c.qkvProjectionMethod = ["dw_bn", "avg", "linear"]
        let data = try c.jsonData()
        XCTAssertEqual(try CvtConfig.decode(data), c)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        let expected: Set<String> = [
            "architectures", "attention_drop_rate", "cls_token", "depth", "drop_path_rate", "drop_rate", "dtype",
            "embed_dim", "id2label", "initializer_range", "kernel_qkv", "label2id", "layer_norm_eps", "mlp_ratio",
            "model_type", "num_channels", "num_heads", "padding_kv", "padding_q", "patch_padding", "patch_sizes",
            "patch_stride", "problem_type", "qkv_bias", "qkv_projection_method", "stride_kv", "stride_q",
        ]
        XCTAssertEqual(Set(obj.keys), expected)
        XCTAssertEqual(obj["model_type"] as? String, "cvt")
        let id2label = try XCTUnwrap(obj["id2label"] as? [String: String])
        XCTAssertEqual(id2label["999"], "LABEL_999", "id2label keys are strings in JSON")
    }

    func testInvalidConfigsNameTheField() {
        expectError(#"{"depth": [1, 2]}"#, field: "patch_sizes")
        expectError(#"{"num_heads": [1, 3]}"#, field: "num_heads")
        expectError(#"{"embed_dim": [64, 192, 385]}"#, field: "embed_dim")
        expectError(#"{"embed_dim": [64, 0, 384]}"#, field: "embed_dim")
        expectError(#"{"patch_stride": [4, -2, 2]}"#, field: "patch_stride")
        expectError(#"{"depth": [1, -1, 2]}"#, field: "depth")
        expectError(#"{"depth": []}"#, field: "depth")
        expectError(#"{"qkv_projection_method": ["dw_bn", "conv", "dw_bn"]}"#, field: "qkv_projection_method")
        expectError(#"{"stride_q": [2, 1, 1]}"#, field: "stride_q")
        expectError(#"{"mlp_ratio": [4.0, 0.0, 4.0]}"#, field: "mlp_ratio")
        expectError(#"{"model_type": "vit"}"#, field: "model_type")
        expectError(#"{"id2label": {"zero": "a"}}"#, field: "id2label")
        expectError(#"{"id2label": {"0": "a", "2": "b"}}"#, field: "id2label")
        expectError(#"{"num_labels": 3, "id2label": {"0": "a"}}"#, field: "num_labels")
        expectError(#"{"problem_type": "ranking"}"#, field: "problem_type")
        expectError(#"{"num_channels": 0}"#, field: "num_channels")
    }

    func testWrongJSONTypesAreDecodingErrors() {
        XCTAssertThrowsError(try decode(#"{"depth": "1,2,10"}"#))
        XCTAssertThrowsError(try decode("[1, 2]"))
        XCTAssertThrowsError(try decode("not json"))
    }

    /// Parameter counts of the presets with 1000 labels, as transformers' `num_parameters()` reports them.
    func testPresetParameterCounts() throws {
        for (config, params, keys) in [(CvtConfig.cvt13, 19_997_480, 459), (.cvt21, 31_622_696, 731), (.cvtW24, 277_196_392, 833)] {
            let counter = ParameterCounter()
            try CvtForImageClassification(zeroed: config).visitParameters(counter, prefix: "")
            XCTAssertEqual(counter.parameters, params, "\(config.depth) \(config.embedDim)")
            XCTAssertEqual(config.parameterCount, params, "computed from the config alone")
            // state_dict keys also hold num_batches_tracked, one per BatchNorm (3 per layer).
            XCTAssertEqual(counter.keys + 3 * config.depth.reduce(0, +), keys)
        }
    }

    func testPresetNames() {
        XCTAssertEqual(CvtConfig.preset(named: "microsoft/cvt-21-384-22k")?.depth, [1, 4, 16])
        XCTAssertEqual(CvtConfig.preset(named: "cvt-w24")?.embedDim, [192, 768, 1024])
        XCTAssertNil(CvtConfig.preset(named: "cvt-99"))
    }
}

/// Counts trainable parameters (BatchNorm running statistics are buffers, not parameters).
final class ParameterCounter: ParameterVisitor {
    var parameters = 0, keys = 0
    func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws {
        keys += 1
        if kind != .runningMean && kind != .runningVar { parameters += tensor.count }
    }
}
