import CKernels
@testable import CvtTensor
import XCTest

/// The Swift LayerNorm (what CPUs without AVX2 and FMA run) against the C kernel that this CPU
/// runs: called directly, so both paths are checked on any machine. They sum in different orders:
/// equal to float32 rounding (outputs up to about 5 here).
final class LayerNormFallbackTests: XCTestCase {
    func testSwiftLayerNormEqualsTheCKernel() throws {
        for (rows, cols) in [(7, 16), (5, 33), (197, 384), (3, 1)] {
            let x = Tensor(shape: [rows, cols]) { Float(($0 * 7919) % 1013) / 97 - 5 }
            let w = Tensor(shape: [cols]) { 0.5 + Float($0) / 50 }, b = Tensor(shape: [cols]) { Float($0) / 70 - 0.4 }
            let fromC = Tensor(uninitialized: [rows, cols]), fromSwift = Tensor(uninitialized: [rows, cols])
            Kernels.layerNorm(x.unsafePointer, fromC.unsafePointer, rows: rows, cols: cols, weight: w.unsafePointer, bias: b.unsafePointer, eps: 1e-5)
            Kernels.layerNormRows(x.unsafePointer, Kernels.Float32Sink(p: fromSwift.unsafePointer), rows: rows, cols: cols,
                                  weight: w.unsafePointer, bias: b.unsafePointer, eps: 1e-5)
            let err = fromC.maxAbsDifference(fromSwift)
            XCTAssertLessThan(err, 1e-5, "[\(rows), \(cols)]: max abs error \(err); first \(Array(fromSwift.scalars.prefix(3))) vs \(Array(fromC.scalars.prefix(3)))")
        }
    }
}
