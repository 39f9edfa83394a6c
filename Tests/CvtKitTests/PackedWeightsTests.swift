import CvtKit
import Foundation
import XCTest

/// Linear layers keep their matmul weights packed in oneDNN's blocked layout after the first
/// forward pass: the same numbers, one copy of the weights, and the float32 values still there for
/// saving, reloading and switching precision.
final class PackedLinearWeightsTests: XCTestCase {
    func fixture(_ name: String) -> URL { fixturesRoot.appendingPathComponent("parity/\(name)") }
    func tensor(_ dir: URL, _ file: String, _ name: String) throws -> Tensor {
        try SafetensorsFile(url: dir.appendingPathComponent(file)).tensor(name)
    }
    func layers(_ m: CvtForImageClassification) -> [Linear] { m.cvt.linearLayers + (m.classifier.map { [$0] } ?? []) }

    /// cvt-13's widths (64, 192, 384, which fit the blocked layouts) with one block per stage.
    var config: CvtConfig {
        var c = CvtConfig()
        c.depth = [1, 1, 1]; c.numLabels = 3
        return c
    }
    var input: Tensor { Tensor(shape: [2, 3, 48, 48]) { Float(($0 * 7919) % 255) / 64 - 2 } }

    func plainEngine(_ precision: ComputePrecision = .float32) throws -> Engine {
        let e = try Engine()
        e.packsWeights = false; e.precision = precision
        return e
    }

    func testPackedAndPlainWeightsGiveTheSameNumbers() throws {
        let plain = try CvtForImageClassification.randomlyInitialized(config: config, seed: 1, engine: plainEngine())
        let packed = try CvtForImageClassification.randomlyInitialized(config: config, seed: 1, engine: Engine())
        let before = try packed.stateDict().tensors
        let a = try plain(input, outputHiddenStates: true), b = try packed(input, outputHiddenStates: true)
        assertTensorClose("logits, packed vs plain weights", b.logits, a.logits, tol: 2e-5)
        for s in 0..<3 {
            assertTensorClose("hidden_states.\(s), packed vs plain", try XCTUnwrap(b.hiddenStates)[s], try XCTUnwrap(a.hiddenStates)[s], tol: 2e-5)
        }
        for l in layers(plain) { XCTAssertFalse(l.isPacked) }
        for l in packed.cvt.linearLayers {
            XCTAssertTrue(l.isPacked, "\(l.inFeatures)x\(l.outFeatures)")
            XCTAssertEqual(l.weight.count, 0, "the plain float32 copy is dropped, not kept beside the packed one")
        }
        // A 3-class head would be padded to 16 columns by AVX-512's blocked layout: there it stays
        // plain (AVX2's layout for it is unpadded, and it is packed).
        let head = try XCTUnwrap(packed.classifier)
        XCTAssertEqual(head.isPacked, try paddingIsSmall(head, packed.engine))
        // Reading the parameters (saving) unpacks a copy, bit for bit, and leaves the layers packed.
        let after = try packed.stateDict().tensors
        XCTAssertEqual(Set(after.keys), Set(before.keys))
        for (key, t) in before { XCTAssertEqual(after[key]?.scalars, t.scalars, key) }
        XCTAssertTrue(packed.cvt.linearLayers.allSatisfy(\.isPacked))
        XCTAssertEqual(packed.parameterBytes, plain.parameterBytes, "these widths need no padding")
    }

    /// The packing rule: a layer is packed when its blocked layout is at most 1/8 larger than plain.
    func paddingIsSmall(_ l: Linear, _ engine: Engine) throws -> Bool {
        try engine.packedBytes(k: l.inFeatures, n: l.outFeatures, type: l.weightStorage) * 8
            <= l.inFeatures * l.outFeatures * l.weightStorage.byteCount * 9
    }

    func testNarrowLayersStayPlain() throws {
        // The `tiny` fixture's 16–48 features would pad by up to 4x in AVX-512's blocked layouts:
        // those matmuls keep plain weights (AVX2's layouts pad none of them: all are packed). The
        // memory stays what it was, and the numbers are the reference's.
        let dir = fixture("tiny")
        let engine = try Engine()
        let model = try CvtForImageClassification(pretrained: dir, engine: engine)
        let bytes = model.parameterBytes
        assertTensorClose("tiny/logits", try model(try tensor(dir, "input.safetensors", "pixel_values")).logits,
                          try tensor(dir, "expected.safetensors", "logits"), tol: 1e-4)
        XCTAssertEqual(model.parameterBytes, bytes)
        for l in layers(model) {
            XCTAssertEqual(l.isPacked, try paddingIsSmall(l, engine), "\(l.inFeatures)x\(l.outFeatures)")
        }
        if try engine.packedBytes(k: 16, n: 16, type: .float32) > 16 * 16 * 4 * 9 / 8 {
            XCTAssertTrue(layers(model).contains { !$0.isPacked }, "this CPU's layouts pad 16-wide layers")
        }
    }

    func testEveryLinearKernelGivesTheReferenceNumbers() throws {
        // oneDNN's kernels and our AVX2 GEMM (where the CPU has AVX2+FMA), whichever is the default here.
        for kernel in [LinearKernel.onednn, .avx2] where kernel.isSupported {
            for name in ["tiny", "nonsquare_batch"] {
                let dir = fixture(name)
                let engine = try Engine()
                engine.linearKernel = kernel
                let model = try CvtForImageClassification(pretrained: dir, engine: engine)
                let out = try model(try tensor(dir, "input.safetensors", "pixel_values"), outputHiddenStates: true)
                assertTensorClose("\(name)/logits (\(kernel))", out.logits, try tensor(dir, "expected.safetensors", "logits"), tol: 1e-4)
                assertTensorClose("\(name)/hidden_states.2 (\(kernel))", try XCTUnwrap(out.hiddenStates?.last),
                                  try tensor(dir, "expected.safetensors", "hidden_states.2"), tol: 1e-4)
                let packed = layers(model).filter(\.isPacked)
                XCTAssertFalse(packed.isEmpty, "\(name): some layers are packed")
                for l in packed { XCTAssertEqual(l.packedKernel, kernel) }
                // Switching kernels repacks: the other kernel's layout is never read by this one.
                engine.linearKernel = kernel == .onednn ? .avx2 : .onednn
                if engine.linearKernel != kernel {
                    defer { for l in layers(model).filter(\.isPacked) { XCTAssertEqual(l.packedKernel, engine.linearKernel) } }
                    assertTensorClose("\(name)/logits after switching from \(kernel)", try model(try tensor(dir, "input.safetensors", "pixel_values")).logits,
                                      try tensor(dir, "expected.safetensors", "logits"), tol: 1e-4)
                }
            }
        }
    }

    /// float16-stored weights (float32 arithmetic) and, where bfloat16 is emulated, bfloat16 weights
    /// run on our GEMM from 16-bit panels: half the memory, and the numbers of oneDNN's path, which
    /// widens the stored values per call.
    func testHalfPrecisionWeightsOnTheAVX2Kernel() throws {
        guard LinearKernel.avx2.isSupported else { throw XCTSkip("this CPU has no AVX2 + FMA: our GEMM does not run here") }
        let dir = fixture("tiny")
        let x = try tensor(dir, "input.safetensors", "pixel_values")
        // bf16: two float32 summation orders can flip an activation's bf16 rounding (see above).
        for (storage, precision, tol) in [(ElementType.float16, ComputePrecision.float32, Float(1e-5)), (.bfloat16, .bfloat16, 2e-2)] {
            func model(_ kernel: LinearKernel) throws -> CvtForImageClassification {
                let engine = try Engine()
                engine.linearKernel = kernel; engine.precision = precision
                let m = try CvtForImageClassification(pretrained: dir, engine: engine)
                try m.storeWeights(as: storage)
                return m
            }
            let ours = try model(.avx2), reference = try model(.onednn)
            let want = try reference(x).logits
            assertTensorClose("\(storage) weights on the AVX2 kernel", try ours(x).logits, want, tol: tol)
            if precision == .bfloat16 {
                // Within bf16's own tolerance of the float32 reference, as oneDNN's bf16 path.
                assertTensorClose("bf16 on the AVX2 kernel vs float32 transformers", try ours(x).logits,
                                  try tensor(dir, "expected.safetensors", "logits"), tol: BFloat16Tests.logitTolerance)
            }
            let onPanels = storage == .float16 || ours.engine.emulatesBFloat16
            let packed = layers(ours).filter(\.isPacked)
            if onPanels {
                XCTAssertFalse(packed.isEmpty, "\(storage): layers are packed")
                for l in packed { XCTAssertEqual(l.packedKernel, .avx2) }
            }
            // Still half the float32 bytes, and the stored values are what saving sees.
            XCTAssertEqual(ours.parameterBytes, reference.parameterBytes)
            let a = try ours.stateDict().tensors, b = try reference.stateDict().tensors
            for (key, t) in a { XCTAssertEqual(t.maxAbsDifference(try XCTUnwrap(b[key])), 0, "\(storage): \(key)") }
            // Switching to oneDNN unpacks the panels into the stored type.
            ours.engine.linearKernel = .onednn
            assertTensorClose("\(storage) weights after switching to oneDNN", try ours(x).logits, want, tol: tol)
            XCTAssertEqual(ours.parameterBytes, reference.parameterBytes)
        }
    }

    func testLoadingNewWeightsIntoAPackedModelUsesThem() throws {
        let model = try CvtForImageClassification.randomlyInitialized(config: config, seed: 1, engine: Engine())
        let old = try model(input).logits
        XCTAssertTrue(model.cvt.linearLayers.allSatisfy(\.isPacked))
        let other = try CvtForImageClassification.randomlyInitialized(config: config, seed: 3, engine: plainEngine())
        let otherLogits = try other(input).logits
        try model.load(from: try other.stateDict().tensors, sourceName: "random seed 3")
        XCTAssertTrue(model.cvt.linearLayers.allSatisfy { !$0.isPacked && $0.weight.count == $0.inFeatures * $0.outFeatures })
        let new = try model(input).logits
        XCTAssertGreaterThan(new.maxAbsDifference(old), 1e-4, "the packed copy of the old weights must not be used")
        assertTensorClose("packed model after loading other weights", new, otherLogits, tol: 2e-5)
        XCTAssertTrue(model.cvt.linearLayers.allSatisfy(\.isPacked))
    }

    func testPrecisionAndStorageSwitchesAfterPacking() throws {
        let engine = try Engine()
        let model = try CvtForImageClassification.randomlyInitialized(config: config, seed: 1, engine: engine)
        let fp32 = try model(input).logits
        // float32 weights packed for float32 kernels cannot feed bf16 ones: a bf16 engine gets them
        // back in float32 (nothing rounded in place) and converts them per precision as before.
        engine.precision = .bfloat16
        let bf16 = try model(input).logits
        XCTAssertTrue(model.cvt.linearLayers.allSatisfy { !$0.isPacked && $0.weightStorage == .float32 })
        let reference = try CvtForImageClassification.randomlyInitialized(config: config, seed: 1, engine: plainEngine(.bfloat16))
        XCTAssertEqual(bf16.scalars, try reference(input).logits.scalars)
        engine.precision = .float32
        XCTAssertEqual(try model(input).logits.scalars, fp32.scalars)
        XCTAssertTrue(model.cvt.linearLayers.allSatisfy(\.isPacked))
        // bf16 storage with a bf16 engine packs the bf16 weights: one copy, half the bytes.
        try model.storeWeights(as: .bfloat16)
        engine.precision = .bfloat16
        let half = try model(input).logits
        // (Without native bf16 kernels, oneDNN's packed form would hold float32: twice the bytes, so
        // the packing rule keeps the bf16 weights plain there; our AVX2 GEMM packs 16-bit panels.)
        let packsBF16 = Engine.hasNativeBFloat16 || engine.packingKernel(.bfloat16) == .avx2
        XCTAssertTrue(model.cvt.linearLayers.allSatisfy { $0.isPacked == packsBF16 && $0.weightStorage == .bfloat16 })
        // Same bf16 operands; with another kernel the float32 sums differ in order, which can flip
        // the bf16 rounding of an activation (2^-8 relative) and spread from there.
        XCTAssertLessThanOrEqual(half.maxAbsDifference(bf16), packsBF16 && !Engine.hasNativeBFloat16 ? 1e-2 : 1e-4, "same bf16 operands, other layout")
        let compact = try CvtForImageClassification.randomlyInitialized(config: config, seed: 1, engine: plainEngine(.bfloat16), weightStorage: .bfloat16)
        XCTAssertEqual(model.parameterBytes, compact.parameterBytes)
        // Back to float32 storage: the bf16-rounded values, exactly, packed again for float32.
        try model.storeWeights(as: .float32)
        engine.precision = .float32
        XCTAssertTrue(model.cvt.linearLayers.allSatisfy { !$0.isPacked && $0.weightStorage == .float32 })
        let widened = try model.stateDict().tensors
        let packedLogits = try model(input).logits
        XCTAssertTrue(model.cvt.linearLayers.allSatisfy(\.isPacked))
        let (compactState, _) = try compact.stateDict()
        for (key, t) in widened { XCTAssertEqual(compactState[key]?.scalars, t.scalars, key) }
        // Turning packing off unpacks on the next call, with the same numbers.
        engine.packsWeights = false
        assertTensorClose("logits after unpacking", try model(input).logits, packedLogits, tol: 2e-5)
        XCTAssertTrue(layers(model).allSatisfy { !$0.isPacked })
    }
}
