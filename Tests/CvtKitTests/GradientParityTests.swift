import CvtKit
import Foundation
import XCTest

/// The tolerance, per tensor: max |ours − theirs| ≤ 1e-3 · max(max |theirs|, 1e-2).
func assertGradientClose(_ name: String, _ actual: Tensor, _ expected: Tensor, file: StaticString = #filePath, line: UInt = #line) {
    guard actual.shape == expected.shape else {
        XCTFail("\(name): shape \(actual.shape), expected \(expected.shape)", file: file, line: line); return
    }
    let scale = expected.scalars.reduce(Float(0)) { max($0, abs($1)) }
    let tol = 1e-3 * max(scale, 1e-2)
    let err = actual.maxAbsDifference(expected)
    if !(err <= tol) {
        XCTFail("\(name): max abs error \(err) > \(tol) (max |expected| \(scale)); first actual \(Array(actual.scalars.prefix(5))), expected \(Array(expected.scalars.prefix(5)))",
                file: file, line: line)
    }
}

/// Loss, every parameter gradient and the BatchNorm buffers after one training-mode pass against
/// PyTorch (Fixtures/training/gradients, Scripts/make_training_fixtures.py). Cases transformers
/// cannot run were computed in float64 by the reference patched as the original CvT defines them
/// (each case.json says how), checked there against finite differences.
final class GradientParityTests: XCTestCase {
    static let root = fixturesRoot.appendingPathComponent("training/gradients")

    func runCase(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let dir = Self.root.appendingPathComponent(name)
        let model = try CvtForImageClassification(pretrained: dir)
        let data = try TrainingTensors(url: dir.appendingPathComponent("input.safetensors"))
        try data.validate(for: model.config, source: name)
        let expected = try SafetensorsFile(url: dir.appendingPathComponent("expected.safetensors"))
        let (loss, grads) = try model.gradients(pixelValues: data.pixelValues, labels: data.labels)
        let refLoss = try expected.floats("loss")[0]
        XCTAssertEqual(loss, refLoss, accuracy: 1e-5 * max(1, abs(refLoss)), "\(name): loss", file: file, line: line)
        let expectedNames = Set(expected.tensorNames.filter { $0.hasPrefix("grad.") }.map { String($0.dropFirst(5)) })
        XCTAssertEqual(Set(grads.map(\.name)), expectedNames, "\(name): gradient names differ from named_parameters()", file: file, line: line)
        XCTAssertEqual(grads.count, expectedNames.count, "\(name): duplicate gradient names", file: file, line: line)
        for (key, g) in grads where expectedNames.contains(key) {
            assertGradientClose("\(name) grad.\(key)", g, try expected.tensor("grad.\(key)"), file: file, line: line)
        }
        // BatchNorm buffers after the pass: running statistics moved by momentum 0.1, counters at 1.
        let state = try model.stateDict().tensors
        for bufferName in expected.tensorNames where bufferName.hasPrefix("buffer.") {
            let key = String(bufferName.dropFirst(7))
            if key.hasSuffix("num_batches_tracked") {
                let bnKey = String(key.dropLast(".num_batches_tracked".count))
                guard let bn = model.namedBatchNorms.first(where: { $0.key == bnKey })?.module else {
                    XCTFail("\(name): no BatchNorm \(bnKey)", file: file, line: line); continue
                }
                XCTAssertEqual(Int64(bn.numBatchesTracked), try expected.int64s(bufferName)[0], "\(name): \(key)", file: file, line: line)
            } else if let ours = state[key] {
                assertGradientClose("\(name) \(key)", ours, try expected.tensor(bufferName), file: file, line: line)
            } else {
                XCTFail("\(name): buffer \(key) missing from our state dict", file: file, line: line)
            }
        }
    }

    func testTinyCrossEntropy() throws { try runCase("tiny_ce") }
    func testNonSquareMixedQKVBias() throws { try runCase("nonsquare_qkvbias") }
    func testRegression() throws { try runCase("regression") }
    func testMultiLabel() throws { try runCase("multilabel") }
    func testNoClsTokenInLastStage() throws { try runCase("no_cls_last") }
    func testKeyValueStride1() throws { try runCase("kv_stride1") }
    func testAvgAndLinearProjectionsFloat64Reference() throws { try runCase("proj_avg_linear") }
    func testClsTokenInEveryStageFloat64Reference() throws { try runCase("cls_every_stage") }
    func testShallowDepthFloat64Reference() throws { try runCase("shallow_depth") }
}
