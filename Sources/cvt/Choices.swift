import ArgumentParser
import CvtKit

// Options with fixed choices: `--help` lists them and the parser rejects anything else, naming
// the value and the choices.
extension InferenceDType: ExpressibleByArgument {}
extension ClassificationFunction: ExpressibleByArgument {}
extension IntervalStrategy: ExpressibleByArgument {}
extension SaveStrategy: ExpressibleByArgument {}

/// `--linear-kernel` / `--depthwise-kernel`.
enum KernelChoice: String, CaseIterable, ExpressibleByArgument {
    case onednn, avx2
    var kernel: LinearKernel { self == .avx2 ? .avx2 : .onednn }
}

/// `bench --mode`.
enum BenchMode: String, CaseIterable, ExpressibleByArgument {
    case inference, train
}

/// `--lr-scheduler-type`: transformers' names.
enum SchedulerChoice: String, CaseIterable, ExpressibleByArgument {
    case linear, cosine, constant
    case constantWithWarmup = "constant_with_warmup"
}

/// `train --dtype`: the precisions training runs in.
enum TrainingDType: String, CaseIterable, ExpressibleByArgument {
    case float32, bfloat16
    var precision: ComputePrecision { self == .bfloat16 ? .bfloat16 : .float32 }
}
