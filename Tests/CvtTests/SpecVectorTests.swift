import Cvt
import CvtNN
import CvtTensor
import XCTest

/// Formula-defined test vectors: inputs and weights from closed-form formulas, expected values from transformers 5.23.0 / torch 2.15.0.
final class SpecVectorTests: XCTestCase {
    /// cvt-13 at full size, 1000 labels, [1, 3, 224, 224].
    func testCaseACvt13FullSize() throws {
        let model = try syntheticModel(.cvt13)
        XCTAssertEqual(try model.stateDict().order.count, 459 - 39, "459 keys minus the 39 num_batches_tracked")
        let out = try model(syntheticPixels([1, 3, 224, 224]), outputHiddenStates: true)
        // cvt-13's widths fit the blocked layouts: this reference vector covers packed weights.
        XCTAssertTrue((model.cvt.linearLayers + [try XCTUnwrap(model.classifier)]).allSatisfy(\.isPacked))
        XCTAssertEqual(out.logits.shape, [1, 1000])
        assertClose("logits[0,:8]", Array(out.logits.scalars.prefix(8)),
                    [0.178793, -0.134363, -0.226797, 0.044100, 0.236902, 0.042618, -0.218511, -0.120119], tol: 2e-5)
        XCTAssertEqual(out.logits.sum(), 0.155326, accuracy: 2e-4, "sum of logits")
        XCTAssertEqual(out.logits.scalars.indices.max { out.logits.scalars[$0] < out.logits.scalars[$1] }, 798)
        let cls = try XCTUnwrap(out.clsTokenValue)
        XCTAssertEqual(cls.shape, [1, 1, 384])
        assertClose("cls_token_value[0,0,:6]", Array(cls.scalars.prefix(6)),
                    [0.255708, 0.150489, -0.040303, -0.160441, -0.126661, 0.006921], tol: 2e-5)
        let hs = try XCTUnwrap(out.hiddenStates)
        XCTAssertEqual(hs.map(\.shape), [[1, 64, 56, 56], [1, 192, 28, 28], [1, 384, 14, 14]])
        let sums = [92.06993, 40.65188, 26.73605], absMeans: [Float] = [0.888738, 0.899960, 0.905955]
        let firsts: [[Float]] = [[1.260072, 0.548979, 0.597563], [1.224787, 1.601798, 1.500481], [-0.277933, 0.492760, 0.102117]]
        for s in 0..<3 {
            XCTAssertEqual(hs[s].sum(), sums[s], accuracy: 2e-3, "hidden_states.\(s) sum")
            let absMean = Float(hs[s].scalars.reduce(0.0) { $0 + Double(abs($1)) } / Double(hs[s].count))
            XCTAssertEqual(absMean, absMeans[s], accuracy: 2e-6, "hidden_states.\(s) abs mean")
            assertClose("hidden_states.\(s)[0,0,0,:3]", Array(hs[s].scalars.prefix(3)), firsts[s], tol: 2e-5)
        }
        XCTAssertEqual(out.lastHiddenState.scalars, hs[2].scalars)
    }

    /// The tiny config, batch 2, [2, 3, 64, 64].
    func testCaseBTinyBatch2() throws {
        var c = CvtConfig()
        c.embedDim = [16, 32, 48]; c.numHeads = [1, 2, 3]; c.depth = [1, 2, 3]; c.numLabels = 10
        let model = try syntheticModel(c)
        let out = try model(syntheticPixels([2, 3, 64, 64]), outputHiddenStates: true)
        XCTAssertEqual(out.logits.shape, [2, 10])
        let l = out.logits.scalars
        assertClose("logits[0,:8]", Array(l[0..<8]), [0.490263, -0.280442, -0.155388, 0.450022, -0.384726, -0.021750, 0.416093, -0.435787], tol: 2e-5)
        assertClose("logits[1,:8]", Array(l[10..<18]), [0.559996, -0.291659, -0.212209, 0.526646, -0.416107, -0.062252, 0.494096, -0.485074], tol: 2e-5)
        XCTAssertEqual(out.logits.sum(), 1.078365, accuracy: 1e-5)
        assertClose("cls[0,0,:6]", Array(try XCTUnwrap(out.clsTokenValue).scalars.prefix(6)),
                    [0.112607, 0.308307, -0.149863, -0.003945, 0.004976, -0.183004], tol: 2e-5)
        let hs = try XCTUnwrap(out.hiddenStates)
        XCTAssertEqual(hs.map(\.shape), [[2, 16, 16, 16], [2, 32, 8, 8], [2, 48, 4, 4]])
        XCTAssertEqual(hs[0].sum(), -9.75518, accuracy: 1e-3)
        XCTAssertEqual(hs[1].sum(), 6.52194, accuracy: 1e-3)
        XCTAssertEqual(hs[2].sum(), 0.48414, accuracy: 1e-3)
        assertClose("hidden_states.0[0,0,0,:3]", Array(hs[0].scalars.prefix(3)), [-0.960406, -0.103151, -0.166007], tol: 2e-5)
    }

    /// bf16 matmul mode on the cvt-13 vector: its own tolerance against the float32 reference.
    func testCaseACvt13InBFloat16() throws {
        let engine = try Engine()
        engine.precision = .bfloat16
        let m = try CvtForImageClassification(zeroed: .cvt13, engine: engine)
        try m.visitParameters(SyntheticWeights(), prefix: "")
        m.parametersDidChange()
        let logits = try m(syntheticPixels([1, 3, 224, 224])).logits.scalars
        let reference: [Float] = [0.178793, -0.134363, -0.226797, 0.044100, 0.236902, 0.042618, -0.218511, -0.120119]
        let err = zip(logits.prefix(8), reference).map { abs($0 - $1) }.max() ?? 0
        print("bf16 cvt-13 spec vector: max |logits[0,:8] error| = \(err)")
        assertClose("bf16 logits[0,:8]", Array(logits.prefix(8)), reference, tol: 0.02)
        XCTAssertGreaterThan(err, 1e-5, "bf16 mode should differ from float32 (is it on?)")
    }
}
