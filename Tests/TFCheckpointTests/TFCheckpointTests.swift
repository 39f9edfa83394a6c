import Foundation
import TFCheckpoint
import Synchronization
import XCTest

final class TFCheckpointTests: XCTestCase {
    /// Every key of the h5 file equals the same-named safetensors tensor (shape and every bit), and
    /// the key sets are the same apart from PyTorch's int64 `num_batches_tracked` buffers.
    private func assertMatchesSafetensors(_ folder: String, file: StaticString = #filePath, line: UInt = #line) throws
        -> (TFCheckpoint, SafetensorsFixture)
    {
        let ckpt = try TFCheckpoint(url: tfFixture("\(folder)/tf_model.h5"))
        let st = try SafetensorsFixture(url: tfFixture("\(folder)/model.safetensors"))
        XCTAssertEqual(Set(ckpt.tensorNames), st.floatNames, file: file, line: line)
        let nonFloat = Set(st.tensors.keys).subtracting(st.floatNames)
        XCTAssertFalse(nonFloat.isEmpty, file: file, line: line)
        for name in nonFloat {
            XCTAssertTrue(name.hasSuffix(".num_batches_tracked"), name, file: file, line: line)
            XCTAssertEqual(st.tensors[name]?.dtype, "I64", file: file, line: line)
        }
        XCTAssertEqual(ckpt.unmappedDatasets, [], file: file, line: line)
        XCTAssertEqual(ckpt.skippedLinks, [], file: file, line: line)
        XCTAssertEqual(ckpt.datasetCount, ckpt.tensorNames.count, file: file, line: line)
        for name in ckpt.tensorNames {
            XCTAssertEqual(ckpt.shape(of: name), st.tensors[name]?.shape, name, file: file, line: line)
            XCTAssertEqual(ckpt.dtype(of: name), "float32", name, file: file, line: line)
            let mine = try ckpt.floats(name)
            let theirs = try XCTUnwrap(st.floats(name), name, file: file, line: line)
            XCTAssertEqual(mine.count, theirs.count, name, file: file, line: line)
            XCTAssertTrue(zip(mine, theirs).allSatisfy { $0.bitPattern == $1.bitPattern }, "values of \(name)", file: file, line: line)
        }
        return (ckpt, st)
    }

    func testClassifierCheckpointMatchesPyTorchWeights() throws {
        let (ckpt, _) = try assertMatchesSafetensors("cvt_tiny")
        XCTAssertFalse(ckpt.isBaseModel)
        // 6 layers x 31 float keys (34 minus 3 num_batches_tracked) + 3 x 4 embedding + cls + 4 head
        XCTAssertEqual(ckpt.tensorNames.count, 203)
        XCTAssertTrue(ckpt.tensorNames.contains("cvt.encoder.stages.2.cls_token"))
        XCTAssertTrue(ckpt.tensorNames.contains("classifier.weight"))
    }

    func testBaseModelCheckpointMatchesPyTorchWeights() throws {
        let (ckpt, _) = try assertMatchesSafetensors("cvt_tiny_base")
        XCTAssertTrue(ckpt.isBaseModel)
        XCTAssertTrue(ckpt.tensorNames.contains("encoder.stages.2.cls_token"))
        XCTAssertFalse(ckpt.tensorNames.contains { $0.hasPrefix("cvt.") || $0.hasPrefix("classifier") || $0.hasPrefix("layernorm.") })
        XCTAssertEqual(ckpt.datasetPath(of: "encoder.stages.0.layers.0.output.dense.weight"),
                       "/cvt/tf_cvt_model/cvt/encoder/stages.0/layers.0/output/dense/kernel:0")
    }

    func testLayoutConversions() throws {
        let ckpt = try TFCheckpoint(url: tfFixture("cvt_tiny/tf_model.h5"))
        let scope = "/cvt/tf_cvt_for_image_classification/cvt/encoder"
        let cases: [(key: String, tf: [Int], pt: [Int], layout: TFLayout, path: String)] = [
            ("cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight", [7, 7, 3, 8], [8, 3, 7, 7], .conv2D,
             "\(scope)/stages.0/embedding/convolution_embeddings/projection/kernel:0"),
            ("cvt.encoder.stages.1.embedding.convolution_embeddings.projection.weight", [3, 3, 8, 16], [16, 8, 3, 3], .conv2D,
             "\(scope)/stages.1/embedding/convolution_embeddings/projection/kernel:0"),
            ("cvt.encoder.stages.2.layers.1.attention.attention.convolution_projection_key.convolution_projection.convolution.weight",
             [3, 3, 1, 24], [24, 1, 3, 3], .conv2D,
             "\(scope)/stages.2/layers.1/attention/attention/convolution_projection_key/convolution_projection/convolution/kernel:0"),
            ("cvt.encoder.stages.2.layers.1.attention.attention.convolution_projection_key.convolution_projection.normalization.running_var",
             [24], [24], .identity,
             "\(scope)/stages.2/layers.1/attention/attention/convolution_projection_key/convolution_projection/normalization/moving_variance:0"),
            ("cvt.encoder.stages.1.layers.0.attention.attention.convolution_projection_value.convolution_projection.normalization.running_mean",
             [16], [16], .identity,
             "\(scope)/stages.1/layers.0/attention/attention/convolution_projection_value/convolution_projection/normalization/moving_mean:0"),
            ("cvt.encoder.stages.1.layers.1.intermediate.dense.weight", [16, 64], [64, 16], .reversed,
             "\(scope)/stages.1/layers.1/intermediate/dense/kernel:0"),
            ("cvt.encoder.stages.0.layers.0.layernorm_before.weight", [8], [8], .identity,
             "\(scope)/stages.0/layers.0/layernorm_before/gamma:0"),
            ("cvt.encoder.stages.2.cls_token", [1, 1, 24], [1, 1, 24], .identity, "/cvt/cvt.encoder.stages.2.cls_token:0"),
            ("layernorm.bias", [24], [24], .identity, "/layernorm/tf_cvt_for_image_classification/layernorm/beta:0"),
            ("classifier.weight", [24, 3], [3, 24], .reversed, "/classifier/tf_cvt_for_image_classification/classifier/kernel:0"),
        ]
        for c in cases {
            XCTAssertEqual(ckpt.tfShape(of: c.key), c.tf, c.key)
            XCTAssertEqual(ckpt.shape(of: c.key), c.pt, c.key)
            XCTAssertEqual(ckpt.layout(of: c.key), c.layout, c.key)
            XCTAssertEqual(ckpt.datasetPath(of: c.key), c.path, c.key)
        }
        XCTAssertNil(ckpt.shape(of: "cvt.encoder.stages.0.layers.0.attention.attention.convolution_projection_query.convolution_projection.normalization.num_batches_tracked"))
        assertThrows(["no tensor named 'nope'"]) { try ckpt.floats("nope") }
    }

    /// The fixture's TF logits (TF model re-loaded from tf_model.h5) agree with PyTorch's; since
    /// every mapped weight equals the safetensors weight bit for bit, a port that reproduces the
    /// PyTorch logits from model.safetensors reproduces them from tf_model.h5 too.
    func testFixtureLogitsAgree() throws {
        let expected = try SafetensorsFixture(url: tfFixture("cvt_tiny/expected.safetensors"))
        let pt = try XCTUnwrap(expected.floats("logits_pt"))
        let tf = try XCTUnwrap(expected.floats("logits_tf"))
        XCTAssertEqual(expected.tensors["logits_pt"]?.shape, [2, 3])
        XCTAssertEqual(pt.count, 6)
        XCTAssertLessThan(zip(pt, tf).map { abs($0 - $1) }.max() ?? 1, 1e-5)
        let input = try SafetensorsFixture(url: tfFixture("cvt_tiny/input.safetensors"))
        XCTAssertEqual(input.tensors["pixel_values"]?.shape, [2, 3, 40, 48])
    }

    func testDtypesLinksAndUnmappedDatasets() throws {
        let ckpt = try TFCheckpoint(url: tfFixture("synthetic/dtypes.h5"))
        let expected = try SafetensorsFixture(url: tfFixture("synthetic/dtypes_expected.safetensors"))
        XCTAssertEqual(Set(ckpt.tensorNames), Set(expected.tensors.keys))
        XCTAssertFalse(ckpt.isBaseModel)
        for name in ckpt.tensorNames {
            XCTAssertEqual(ckpt.shape(of: name), expected.tensors[name]?.shape, name)
            XCTAssertEqual(try ckpt.floats(name), expected.floats(name), name)
        }
        XCTAssertEqual(ckpt.dtype(of: "cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight"), "float16")
        XCTAssertEqual(ckpt.dtype(of: "cvt.encoder.stages.0.embedding.convolution_embeddings.projection.bias"), "float32 big-endian")
        XCTAssertEqual(ckpt.dtype(of: "cvt.encoder.stages.0.embedding.convolution_embeddings.normalization.weight"), "float64")
        XCTAssertEqual(ckpt.dtype(of: "classifier.weight"), "float16")
        XCTAssertEqual(ckpt.shape(of: "classifier.weight"), [3, 4])
        XCTAssertEqual(ckpt.unmappedDatasets, [
            "/cvt/names:0",
            "/cvt/tf_cvt_for_image_classification/cvt/encoder/stages.0/extra/kernel:0",
            "/lonely",
            "/optimizer_weights/Adam/iter:0",
        ])
        XCTAssertEqual(ckpt.unmappedReasons["/optimizer_weights/Adam/iter:0"], "not floating-point (integer, 8 bytes)")
        XCTAssertEqual(ckpt.unmappedReasons["/cvt/tf_cvt_for_image_classification/cvt/encoder/stages.0/extra/kernel:0"],
                       "maps to 'cvt.encoder.stages.0.extra.weight', which is not a CvT state-dict key")
        XCTAssertEqual(ckpt.skippedLinks, ["/cvt/alias (soft link)", "/elsewhere (external link)"])
        let all = try ckpt.allFloats()
        XCTAssertEqual(Set(all.keys), Set(ckpt.tensorNames))
    }

    func testUnknownLayouts() {
        assertThrows(["bad_rank.h5", "unknown layout", "'classifier.weight'", "rank 2", "[1, 4, 3]"]) {
            try TFCheckpoint(url: tfFixture("synthetic/bad_rank.h5"))
        }
        assertThrows(["duplicate.h5", "unknown layout", "both map to 'classifier.bias'"]) {
            try TFCheckpoint(url: tfFixture("synthetic/duplicate.h5"))
        }
        assertThrows(["no_weights.h5", "unknown layout: no dataset maps to a CvT weight", "Keras 3"]) {
            try TFCheckpoint(url: tfFixture("synthetic/no_weights.h5"))
        }
    }

    func testNotHDF5() throws {
        let dir = try makeTempDir(self)
        let text = dir.appendingPathComponent("config.h5")
        try Data("{\"model_type\": \"cvt\"}\n".utf8).write(to: text)
        assertThrows([text.path, "not an HDF5 file", "JSON", "tf_model.h5"]) { try TFCheckpoint(url: text) }

        let empty = dir.appendingPathComponent("empty.h5")
        try Data().write(to: empty)
        assertThrows(["not an HDF5 file", "empty"]) { try TFCheckpoint(url: empty) }

        let zip = dir.appendingPathComponent("pytorch_model.bin")
        try Data([0x50, 0x4B, 0x03, 0x04] + [UInt8](repeating: 0, count: 60)).write(to: zip)
        assertThrows(["not an HDF5 file", "zip archive"]) { try TFCheckpoint(url: zip) }

        assertThrows(["not an HDF5 file", "safetensors"]) { try TFCheckpoint(url: tfFixture("cvt_tiny/model.safetensors")) }
        assertThrows(["no such file"]) { try TFCheckpoint(url: dir.appendingPathComponent("missing.h5")) }
        assertThrows(["is a directory"]) { try TFCheckpoint(url: dir) }
    }

    func testTruncatedFiles() throws {
        let dir = try makeTempDir(self)
        let whole = try Data(contentsOf: tfFixture("cvt_tiny/tf_model.h5"))
        for length in [8, 100, 2048, whole.count / 2, whole.count - 1] {
            let url = dir.appendingPathComponent("truncated_\(length).h5")
            try whole.prefix(length).write(to: url)
            assertThrows([url.path, "HDF5 could not open the file"]) { try TFCheckpoint(url: url) }
        }
        let half = dir.appendingPathComponent("truncated_\(whole.count / 2).h5")
        assertThrows(["truncated"]) { try TFCheckpoint(url: half) }
    }

    func testConcurrentReads() throws {
        let ckpt = try TFCheckpoint(url: tfFixture("cvt_tiny/tf_model.h5"))
        let names = ckpt.tensorNames
        let reference = try ckpt.allFloats()
        let mismatches = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 64) { i in
            let name = names[(i * 7) % names.count]
            let ok = (try? ckpt.floats(name)) == reference[name]
            if !ok { mismatches.withLock { $0.append(name) } }
        }
        XCTAssertEqual(mismatches.withLock { $0 }, [])
    }
}

final class TFNameMappingTests: XCTestCase {
    func testTransformersRules() {
        XCTAssertEqual(TFNameMapping.map(datasetPath: "/cvt/tf_cvt_model/cvt/encoder/stages.0/embedding/convolution_embeddings/projection/kernel:0", rank: 4),
                       TFMappedName(key: "cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight", layout: .conv2D))
        XCTAssertEqual(TFNameMapping.map(datasetPath: "/cvt/cvt.encoder.stages.2.cls_token:0", rank: 3),
                       TFMappedName(key: "cvt.encoder.stages.2.cls_token", layout: .identity))
        XCTAssertEqual(TFNameMapping.map(variableName: "m/a/b/moving_variance:0", rank: 1)?.key, "a.b.running_var")
        XCTAssertEqual(TFNameMapping.map(variableName: "m/a/b/moving_mean:0", rank: 1)?.key, "a.b.running_mean")
        XCTAssertEqual(TFNameMapping.map(variableName: "m/a/b/beta:0", rank: 1)?.key, "a.b.bias")
        XCTAssertEqual(TFNameMapping.map(variableName: "m/a/b/gamma:0", rank: 1)?.key, "a.b.weight")
        XCTAssertEqual(TFNameMapping.map(variableName: "m/a/b/embeddings:0", rank: 2), TFMappedName(key: "a.b.weight", layout: .identity))
        XCTAssertEqual(TFNameMapping.map(variableName: "m/dense/kernel:0", rank: 2), TFMappedName(key: "dense.weight", layout: .reversed))
        XCTAssertEqual(TFNameMapping.map(variableName: "m/conv/kernel:0", rank: 3), TFMappedName(key: "conv.weight", layout: .conv1D))
        XCTAssertEqual(TFNameMapping.map(variableName: "m/sep/depthwise_kernel:0", rank: 4), TFMappedName(key: "sep.depthwise.weight", layout: .reversed))
        // '$1___$2' -> '$2' for inner levels; '_._' is a level separator.
        XCTAssertEqual(TFNameMapping.map(variableName: "m/x___layers/y_._3/kernel:0", rank: 2)?.key, "layers.y.3.weight")
        XCTAssertEqual(TFNameMapping.map(variableName: "m/a___b/c___d/e___f/bias:0", rank: 1)?.key, "b.c___d.f.bias")
        // A dataset directly under the root is not a Keras weight.
        XCTAssertNil(TFNameMapping.map(datasetPath: "/lonely", rank: 1))
        XCTAssertNil(TFNameMapping.map(variableName: "m/" + Array(repeating: "a___b", count: 11).joined(separator: "/") + "/x", rank: 1))
    }

    func testCvtKeySchema() {
        XCTAssertEqual(TFNameMapping.cvtRank(of: "cvt.encoder.stages.2.cls_token"), 3)
        XCTAssertEqual(TFNameMapping.cvtRank(of: "cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight"), 4)
        XCTAssertEqual(TFNameMapping.cvtRank(of: "cvt.encoder.stages.1.layers.12.attention.attention.convolution_projection_value.convolution_projection.convolution.weight"), 4)
        XCTAssertEqual(TFNameMapping.cvtRank(of: "cvt.encoder.stages.1.layers.0.attention.attention.projection_key.bias"), 1)
        XCTAssertEqual(TFNameMapping.cvtRank(of: "cvt.encoder.stages.1.layers.0.attention.output.dense.weight"), 2)
        XCTAssertEqual(TFNameMapping.cvtRank(of: "classifier.weight"), 2)
        XCTAssertNil(TFNameMapping.cvtRank(of: "cvt.encoder.stages.x.cls_token"))
        XCTAssertNil(TFNameMapping.cvtRank(of: "cvt.encoder.stages.0.layers.0.attention.attention.convolution_projection_query.convolution_projection.normalization.num_batches_tracked"))
        XCTAssertNil(TFNameMapping.cvtRank(of: "encoder.stages.0.embedding.convolution_embeddings.projection.weight"))
    }
}
