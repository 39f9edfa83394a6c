import Cvt
import CvtNN
import CvtTensor
import Foundation
import XCTest

/// Formula-defined weights: every parameter defined by a formula of its flat index, so the reference's
/// numbers can be reproduced without a checkpoint.
final class SyntheticWeights: ParameterVisitor {
    func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws {
        let shape = tensor.shape
        let f: (Double) -> Double
        if key.hasSuffix("cls_token") {
            f = { 0.1 * cos(0.5 * $0) }
        } else if key.hasSuffix("running_mean") {
            f = { 0.1 * sin($0) }
        } else if key.hasSuffix("running_var") {
            f = { 1 + 0.5 * abs(sin($0)) }
        } else if key.hasSuffix(".bias") {
            f = { 0.01 * cos($0) }
        } else if shape.count == 1 {
            f = { 1 + 0.1 * sin($0) }
        } else {
            let fanIn = Double(tensor.count / shape[0])
            f = { sin(0.7 * $0 + 0.3) / fanIn.squareRoot() }
        }
        tensor = Tensor(shape: shape) { Float(f(Double($0))) }
    }
}

/// Formula-defined input: `2·sin(0.001·j)·cos(0.013·j)` over the flat index.
func syntheticPixels(_ shape: [Int]) -> Tensor {
    Tensor(shape: shape) { j in Float(2 * sin(0.001 * Double(j)) * cos(0.013 * Double(j))) }
}

/// Asserts `actual` matches `expected` elementwise within `tol`, printing the name, the max error
/// and the first values on failure.
func assertClose(_ name: String, _ actual: [Float], _ expected: [Float], tol: Float,
                 file: StaticString = #filePath, line: UInt = #line) {
    guard actual.count == expected.count else {
        XCTFail("\(name): \(actual.count) values, expected \(expected.count)", file: file, line: line); return
    }
    var maxErr: Float = 0, at = 0
    for i in 0..<actual.count {
        let e = abs(actual[i] - expected[i])
        if !(e <= maxErr) { maxErr = e; at = i }
    }
    if !(maxErr <= tol) {
        XCTFail("\(name): max abs error \(maxErr) at \(at) > \(tol); first actual \(Array(actual.prefix(6))), expected \(Array(expected.prefix(6)))",
                file: file, line: line)
    }
}

/// A model with the formula-defined synthetic weights (sin/cos of the parameter index; see SpecVectorTests).
func syntheticModel(_ config: CvtConfig) throws -> CvtForImageClassification {
    let m = try CvtForImageClassification(zeroed: config)
    try m.visitParameters(SyntheticWeights(), prefix: "")
    m.parametersDidChange()
    return m
}
