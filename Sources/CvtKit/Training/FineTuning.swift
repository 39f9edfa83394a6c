import Foundation

extension CvtForImageClassification {
    /// This model with the head for `labels`, as transformers' `from_pretrained(path, config=<config
    /// with these id2label/label2id>, ignore_mismatched_sizes=…)`: with as many labels as the
    /// classifier has, its weights are kept and only the names change; with a different count the
    /// classifier is replaced by a freshly initialised one (seeded) when `ignoreMismatchedSizes`,
    /// else that is an error naming both counts. Everything else keeps its trained weights.
    public func withLabels(_ labels: [String], ignoreMismatchedSizes: Bool, seed: UInt64) throws -> CvtForImageClassification {
        guard labels.count >= 1 else { throw TrainingError.invalidArguments("no labels") }
        guard Set(labels).count == labels.count else { throw TrainingError.invalidArguments("label names repeat: \(labels)") }
        var c = config
        let old = c.numLabels
        if old != labels.count && !ignoreMismatchedSizes {
            throw TrainingError.invalidArguments("the checkpoint's classifier has \(old) labels but the data have \(labels.count): pass --ignore-mismatched-sizes to replace the classifier (as from_pretrained(..., ignore_mismatched_sizes=True))")
        }
        c.id2label = Dictionary(uniqueKeysWithValues: labels.enumerated().map { ($0.offset, $0.element) })
        let m = try CvtForImageClassification.randomlyInitialized(config: c, seed: seed, engine: engine)
        var weights = try stateDict().tensors
        if old != labels.count {
            let fresh = try m.stateDict().tensors
            weights["classifier.weight"] = fresh["classifier.weight"]
            weights["classifier.bias"] = fresh["classifier.bias"]
        }
        try m.load(from: weights, sourceName: "the loaded checkpoint")
        for ((_, a), (_, b)) in zip(namedBatchNorms, m.namedBatchNorms) { b.numBatchesTracked = a.numBatchesTracked }
        return m
    }
}

/// The files that describe a finished run, next to the model: `*_results.json`, the training
/// curves and a model card.
public enum TrainingReport {
    /// `train_results.json`, `eval_results.json` (when evaluated) and `all_results.json`, as
    /// transformers' `Trainer.save_metrics` writes them.
    public static func writeResults(train: [String: Double], eval: [String: Double]?, epoch: Double, to url: URL) throws {
        var t = train; t["epoch"] = epoch
        var all = t
        try write(t, url.appendingPathComponent("train_results.json"))
        if var e = eval {
            e["epoch"] = epoch
            try write(e, url.appendingPathComponent("eval_results.json"))
            all.merge(e) { a, _ in a }
        }
        try write(all, url.appendingPathComponent("all_results.json"))
    }

    static func write(_ d: [String: Double], _ url: URL) throws {
        let values = d.mapValues { $0.isFinite ? $0 as Any : "\($0)" as Any }  // JSON has no NaN
        try JSONSerialization.data(withJSONObject: values, options: [.prettyPrinted, .sortedKeys]).write(to: url, options: .atomic)
    }

    /// An SVG chart of the training loss (left axis) and validation accuracy (right axis) against
    /// the optimizer step, from `log_history`.
    public static func curvesSVG(_ state: TrainerState, title: String) -> String {
        let loss = state.logHistory.compactMap { r in r.values["loss"].map { (Double(r.step), $0) } }
        let evalLoss = state.logHistory.compactMap { r in r.values["eval_loss"].map { (Double(r.step), $0) } }
        let acc = state.logHistory.compactMap { r in r.values["eval_accuracy"].map { (Double(r.step), $0) } }
        let W = 760.0, H = 420.0, l = 70.0, r = 70.0, t = 48.0, b = 56.0
        let pw = W - l - r, ph = H - t - b
        let maxStep = Double(max(state.maxSteps, 1))
        let losses = (loss + evalLoss).map(\.1).filter(\.isFinite)
        let lossTop = niceCeil(losses.max() ?? 1)
        let accValues = acc.map(\.1)
        let accLow = accValues.isEmpty ? 0 : max(0, floor((accValues.min()! - 0.02) * 10) / 10)
        func x(_ s: Double) -> Double { l + pw * s / maxStep }
        func yl(_ v: Double) -> Double { t + ph * (1 - min(max(v, 0), lossTop) / lossTop) }
        func ya(_ v: Double) -> Double { t + ph * (1 - (v - accLow) / max(1 - accLow, 1e-9)) }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        func path(_ pts: [(Double, Double)], _ y: (Double) -> Double) -> String {
            pts.map { "\(f(x($0.0))),\(f(y($0.1)))" }.joined(separator: " ")
        }
        var s = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(W))" height="\(Int(H))" viewBox="0 0 \(Int(W)) \(Int(H))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(f(W / 2))" y="24" text-anchor="middle" font-size="15">\(escape(title))</text>
        <rect x="\(f(l))" y="\(f(t))" width="\(f(pw))" height="\(f(ph))" fill="none" stroke="#999"/>

        """
        for i in 0...5 {
            let v = lossTop * Double(i) / 5, yy = yl(v)
            s += "<line x1=\"\(f(l))\" y1=\"\(f(yy))\" x2=\"\(f(l + pw))\" y2=\"\(f(yy))\" stroke=\"#eee\"/>"
            s += "<text x=\"\(f(l - 6))\" y=\"\(f(yy + 4))\" text-anchor=\"end\" fill=\"#1f77b4\">\(String(format: "%.3g", v))</text>\n"
            if !acc.isEmpty {
                let a = accLow + (1 - accLow) * Double(i) / 5
                s += "<text x=\"\(f(l + pw + 6))\" y=\"\(f(ya(a) + 4))\" fill=\"#d62728\">\(String(format: "%.0f%%", a * 100))</text>\n"
            }
        }
        for i in 0...5 {
            let st = maxStep * Double(i) / 5
            s += "<text x=\"\(f(x(st)))\" y=\"\(f(t + ph + 18))\" text-anchor=\"middle\">\(Int(st.rounded()))</text>\n"
        }
        s += "<text x=\"\(f(l + pw / 2))\" y=\"\(f(H - 14))\" text-anchor=\"middle\">optimizer step</text>\n"
        s += "<text transform=\"translate(18,\(f(t + ph / 2))) rotate(-90)\" text-anchor=\"middle\" fill=\"#1f77b4\">loss</text>\n"
        if !acc.isEmpty {
            s += "<text transform=\"translate(\(f(W - 16)),\(f(t + ph / 2))) rotate(90)\" text-anchor=\"middle\" fill=\"#d62728\">validation accuracy</text>\n"
        }
        if loss.count > 0 { s += "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"\(path(loss, yl))\"/>\n" }
        if evalLoss.count > 0 {
            s += "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-dasharray=\"5,3\" stroke-width=\"1.5\" points=\"\(path(evalLoss, yl))\"/>\n"
            for p in evalLoss { s += "<circle cx=\"\(f(x(p.0)))\" cy=\"\(f(yl(p.1)))\" r=\"2.5\" fill=\"#1f77b4\"/>" }
            s += "\n"
        }
        if acc.count > 0 {
            s += "<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"\(path(acc, ya))\"/>\n"
            for p in acc { s += "<circle cx=\"\(f(x(p.0)))\" cy=\"\(f(ya(p.1)))\" r=\"3\" fill=\"#d62728\"/>" }
            s += "\n"
        }
        let legend: [(String, String, String)] = [("training loss", "#1f77b4", ""), ("validation loss", "#1f77b4", "5,3"), ("validation accuracy", "#d62728", "")]
        for (i, (name, color, dash)) in legend.enumerated() {
            let lx = l + 12 + Double(i) * 170, ly = t + 16
            s += "<line x1=\"\(f(lx))\" y1=\"\(f(ly))\" x2=\"\(f(lx + 24))\" y2=\"\(f(ly))\" stroke=\"\(color)\" stroke-width=\"2\"\(dash.isEmpty ? "" : " stroke-dasharray=\"\(dash)\"")/>"
            s += "<text x=\"\(f(lx + 30))\" y=\"\(f(ly + 4))\">\(name)</text>\n"
        }
        return s + "</svg>\n"
    }

    static func niceCeil(_ v: Double) -> Double {
        guard v.isFinite, v > 0 else { return 1 }
        let p = pow(10, floor(log10(v)))
        for m in [1.0, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10] where m * p >= v { return m * p }
        return 10 * p
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }

    /// A Hugging Face model card (README.md): metadata, where the model came from, the data, the
    /// recipe (arguments and command), the results per evaluation and the curves.
    public static func modelCard(name: String, baseModel: String?, dataset: String, labels: [String], numTrain: Int, numEval: Int?,
                                 args: TrainingArguments, augmentation: String, command: String, state: TrainerState,
                                 train: [String: Double], eval: [String: Double]?, curvesFile: String) -> String {
        var s = "---\nlibrary_name: transformers\npipeline_tag: image-classification\ntags:\n- cvt\n- image-classification\n- swift-cvt\n"
        if let baseModel { s += "base_model: \(baseModel)\n" }
        if eval?["eval_accuracy"] != nil { s += "metrics:\n- accuracy\n" }
        s += "---\n\n# \(name)\n\n"
        s += baseModel.map { "`CvtForImageClassification` fine-tuned from `\($0)`" } ?? "`CvtForImageClassification` trained from random initialisation"
        s += " on `\(dataset)` with `cvt train` (swift-cvt). It is a plain Hugging Face checkpoint: it loads with transformers' `AutoModelForImageClassification.from_pretrained` as well as with swift-cvt.\n\n"
        if let e = eval {
            s += "## Results\n\nOn the validation set (\(numEval ?? 0) images):"
            if let a = e["eval_accuracy"] { s += String(format: " accuracy **%.2f%%**,", a * 100) }
            if let l = e["eval_loss"] { s += String(format: " loss %.4f", l) }
            s += ".\n\n"
        }
        s += "![training curves](\(curvesFile))\n\n"
        let evals = state.logHistory.filter { $0.values["eval_loss"] != nil }
        if !evals.isEmpty {
            s += "| epoch | step | validation loss | validation accuracy |\n|---|---|---|---|\n"
            for r in evals {
                s += String(format: "| %.2f | %d | %.4f | %@ |\n", r.epoch, r.step, r.values["eval_loss"]!,
                            r.values["eval_accuracy"].map { String(format: "%.2f%%", $0 * 100) } ?? "")
            }
            s += "\n"
        }
        s += "## Data\n\n\(numTrain) training images"
        if let n = numEval { s += ", \(n) validation images" }
        s += "; \(labels.count) labels: \(labels.map { "`\($0)`" }.joined(separator: ", ")).\n\n"
        s += "## Training\n\n"
        s += "- optimizer: AdamW (betas \(args.adamBeta1), \(args.adamBeta2); eps \(args.adamEpsilon); weight decay \(args.weightDecay)), learning rate \(args.learningRate), \(args.lrSchedulerType.rawValue) schedule, warm-up \(args.warmupSteps)\n"
        s += "- batch \(args.perDeviceTrainBatchSize) × \(args.gradientAccumulationSteps) accumulation, \(state.globalStep) optimizer steps (\(String(format: "%.2f", state.epoch)) epochs), gradient clipping \(args.maxGradNorm), label smoothing \(args.labelSmoothingFactor), seed \(args.seed)\n"
        s += "- augmentation: \(augmentation)\n"
        if let r = train["train_runtime"] {
            s += String(format: "- time: %.1f s (%.1f images/s)\n", r, train["train_samples_per_second"] ?? 0)
        }
        if args.loadBestModelAtEnd, let best = state.bestGlobalStep {
            s += "- weights: the best evaluation by `\(args.resolvedMetricForBestModel ?? "loss")` (step \(best))\n"
        }
        s += "\nCommand:\n\n```\n\(command)\n```\n"
        return s
    }
}
